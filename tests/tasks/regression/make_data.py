"""Write the regression's TFRecord shards: `python make_data.py DIR [SHARDS] [EXAMPLES_PER_SHARD]`."""

import pathlib
import sys

from trainer.records import write

if __name__ == "__main__":
    folder = pathlib.Path(sys.argv[1])
    shards = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    per_shard = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        write(str(folder / f"train-{i:05d}-of-{shards:05d}.tfrecord"), per_shard, seed=i)
    write(str(folder / "eval-00000-of-00001.tfrecord"), per_shard, seed=1000)
