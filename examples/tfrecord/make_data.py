"""Write the example's TFRecord shards and put them where the job will read them.

    python make_data.py DEST [--shards 8] [--examples-per-shard 512] [--s3-endpoint URL]

DEST is a folder, gs://BUCKET/PATH or s3://BUCKET/PATH. It gets train-00000-of-00008.tfrecord
and the other training shards, each of its own examples, and eval-00000-of-00001.tfrecord. A
bucket is reached as a job reaches it (parallel-ml's storage layer, docs/storage.md): Google's
credentials or STORAGE_EMULATOR_HOST for gs://; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
AWS_ENDPOINT_URL (or --s3-endpoint) for s3://.
"""

import argparse
import pathlib
import tempfile

from pml_trainer.storage import open_store
from trainer import records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", help="a folder, gs://BUCKET/PATH or s3://BUCKET/PATH")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--examples-per-shard", type=int, default=512)
    p.add_argument("--s3-endpoint", help="an S3 service other than AWS, e.g. http://127.0.0.1:9000")
    args = p.parse_args()
    store = open_store(args.dest, args.s3_endpoint)
    with tempfile.TemporaryDirectory() as staging:
        files = {f"train-{i:05d}-of-{args.shards:05d}.tfrecord": i for i in range(args.shards)}
        files["eval-00000-of-00001.tfrecord"] = 1000  # a seed no training shard uses
        for name, seed in files.items():
            path = pathlib.Path(staging) / name
            records.write(str(path), *records.synthetic(args.examples_per_shard, seed))
            store.put_file(path, name)
            print(f"{args.dest.rstrip('/')}/{name}: {args.examples_per_shard} examples")


if __name__ == "__main__":
    main()
