"""What checkpoints to S3 cost the training loop, measured in one run.

The same single-process training (synthetic fashion_mnist-shaped data, the study's mlp of two
hidden layers of 128, batch 32 so that an epoch has about 1700 steps) runs with its model dir on
an S3 server this script starts (moto, on 127.0.0.1), twice per round:
  1. no checkpoint within an epoch (the interval is longer than the run),
  2. a checkpoint every 500 steps, written locally and uploaded in the background.
Both save at each epoch's end, outside the epoch's time. A figure is the median epoch time of the
epochs after the first (which pays for tracing); rounds alternate the two so that a busy machine
slows both alike. Prints the ratio of 2 to 1; the target is at most 1.05.

    .venv/bin/python bench/checkpoint_overhead.py [--epochs 3] [--rounds 4] [--record]

With --record, the result is appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from storage_servers import S3Server  # noqa: E402
from trainer.storage import open_store  # noqa: E402

EVERY = 500


def epoch_seconds(uri: str, flags: list[str], every: int, staging: pathlib.Path) -> tuple[list[float], int, float]:
    """Epoch times of one training run into `uri`, how many checkpoints it published, and how
    long training waited for each save (the trainer's own count)."""
    run = subprocess.run([sys.executable, "-m", "trainer", "--model-dir", uri, "--checkpoint-every-steps", str(every),
                          "--keep-checkpoints", "1000", *flags], cwd=ROOT, check=True, capture_output=True,
                         text=True, env={**os.environ, "PML_STAGING_DIR": str(staging)})
    store = open_store(uri)
    epochs = [json.loads(line) for line in store.get_bytes("metrics.jsonl").decode().splitlines()]
    saved = sum(e.name.endswith(".index") for e in store.list("checkpoints"))
    waited = re.search(r"training waited \S+s for them \((\d+) ms each\)", run.stderr)
    return [e["seconds"] for e in epochs], saved, int(waited.group(1)) / 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--neurons", type=int, default=128)
    p.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = p.parse_args()
    flags = ["--dataset", "synthetic", "--train-examples", "60000", "--epochs", str(args.epochs),
             "--batch-size", str(args.batch_size), "--neurons", str(args.neurons)]

    work = pathlib.Path(tempfile.mkdtemp(prefix="pml-bench-"))
    server = S3Server(work / "s3")
    server.niceness = 19  # it stands in for a service on another machine: training comes first
    server.start()
    os.environ.update(server.env())
    server.make_bucket("bench")
    try:
        times: dict[str, list[float]] = {"none": [], "every": []}
        saved, waits = {}, []
        for r in range(args.rounds):
            for name, every in (("none", 10**9), ("every", EVERY)):
                seconds, saved[name], wait = epoch_seconds(f"s3://bench/{name}-{r}", flags, every, work / "staging")
                times[name] += seconds[1:]
                waits += [wait] if name == "every" else []
                print(f"round {r + 1}, {name}: epochs {', '.join(f'{s:.2f}' for s in seconds)} s; "
                      f"{saved[name]} checkpoints published; training waited {wait * 1000:.0f} ms per save",
                      flush=True)
        size = sum(e.size for e in open_store("s3://bench/every-0").list("checkpoints")
                   if e.name.rpartition("/")[2].startswith("ckpt-")) / max(saved["every"], 1)
    finally:
        server.stop()

    base, with_ckpt = statistics.median(times["none"]), statistics.median(times["every"])
    ratio = with_ckpt / base
    per_epoch = saved["every"] - args.epochs  # minus the epoch-end saves both runs make
    summary = (f"epoch time: {base:.2f} s without checkpoints, {with_ckpt:.2f} s with one every {EVERY} steps "
               f"({per_epoch / args.epochs:.1f} per epoch, {size / 1e6:.1f} MB each); ratio {ratio:.3f} "
               f"(target <= 1.05); training waited {statistics.median(waits) * 1000:.0f} ms per save")
    print(summary)
    if args.record:
        record(args, summary, times, ratio)


def record(args, summary: str, times: dict[str, list[float]], ratio: float) -> None:
    command = ".venv/bin/python bench/checkpoint_overhead.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "record")
    load = os.getloadavg()[0]
    with open(ROOT / "bench" / "RESULTS.md", "a") as out:
        out.write(f"""
## Checkpoint overhead: every {EVERY} steps to S3 against none

Machine: 2 cores, 24 GB, Debian 12, Python {platform.python_version()}. S3 is moto's server on
127.0.0.1, at nice 19 as it stands in for a service on another machine; the uploader thread runs
at nice 10. Load average at the end (other work shared the machine): {load:.1f}.
Command: `{command}`, {time.strftime('%Y-%m-%d')}.

{summary}.

| run | epoch times after the first (s) |
| --- | --- |
| no checkpoint within an epoch | {', '.join(f'{s:.2f}' for s in times['none'])} |
| checkpoint every {EVERY} steps | {', '.join(f'{s:.2f}' for s in times['every'])} |

The study lost 20-30 s per save, training stopped while it wrote to Cloud Storage (a node took
278% of the local time). Here a save writes to local disk and training goes on while the
uploader publishes it: the ratio is {ratio:.3f}.
""")


if __name__ == "__main__":
    main()
