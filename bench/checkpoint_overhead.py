"""What checkpoints to S3 cost the training loop, measured in one run.

The same single-process training (synthetic fashion_mnist-shaped data, the study's mlp of two
hidden layers of 128, the trainer's default batch of 256, 150000 examples so that an epoch has
527 steps and the decoded data still fits the input pipeline's cache) runs with its model dir on
an S3 server this script starts (moto, on 127.0.0.1), twice per round:
  1. no checkpoint within an epoch (the interval is longer than the run),
  2. a checkpoint every 500 steps, written locally and uploaded in the background.
Both save at each epoch's end, outside the epoch's time. A round's figure is the ratio of the
median epoch times of 2 and 1, epochs after the first (which pays for tracing and for filling the
data cache); the two runs of a round follow each other so that other work on the machine slows
both alike. Prints the median ratio over the rounds; the target is at most 1.05.

    .venv/bin/python bench/checkpoint_overhead.py [--epochs 3] [--rounds 5] [--record]

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

from pml_trainer.storage import open_store  # noqa: E402

EVERY = 500


def epoch_seconds(uri: str, flags: list[str], every: int, staging: pathlib.Path) -> tuple[list[float], int, float]:
    """Epoch times of one training run into `uri`, how many checkpoints it published, and how
    long training waited for each save (the trainer's own count)."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "--model-dir",
            uri,
            "--checkpoint-every-steps",
            str(every),
            "--keep-checkpoints",
            "1000",
            *flags,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PML_STAGING_DIR": str(staging)},
    )
    store = open_store(uri)
    epochs = [json.loads(line) for line in store.get_bytes("metrics.jsonl").decode().splitlines()]
    saved = sum(e.name.endswith(".index") for e in store.list("checkpoints"))
    waited = re.search(r"training waited \S+s for them \((\d+) ms each\)", run.stderr)
    return [e["seconds"] for e in epochs], saved, int(waited.group(1)) / 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-examples", type=int, default=150_000)
    p.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = p.parse_args()
    flags = [
        "--dataset",
        "synthetic",
        "--train-examples",
        str(args.train_examples),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
    ]

    work = pathlib.Path(tempfile.mkdtemp(prefix="pml-bench-"))
    server = S3Server(work / "s3")
    server.niceness = 19  # it stands in for a service on another machine: training comes first
    server.start()
    os.environ.update(server.env())
    server.make_bucket("bench")
    load_before = os.getloadavg()[0]
    rounds, waits = [], []
    try:
        for r in range(args.rounds):
            medians = {}
            for name, every in (("none", 10**9), ("every", EVERY)):
                seconds, saved, wait = epoch_seconds(f"s3://bench/{name}-{r}", flags, every, work / "staging")
                medians[name] = statistics.median(seconds[1:])
                if name == "every":
                    waits.append(wait)
                    in_epochs = saved - args.epochs  # the epoch-end saves happen in both runs
                print(
                    f"round {r + 1}, {name}: epochs {', '.join(f'{s:.2f}' for s in seconds)} s; "
                    f"{saved} checkpoints published; training waited {wait * 1000:.0f} ms per save",
                    flush=True,
                )
            rounds.append((medians["none"], medians["every"]))
        size = (
            sum(
                e.size
                for e in open_store("s3://bench/every-0").list("checkpoints")
                if e.name.rpartition("/")[2].startswith("ckpt-")
            )
            / saved
        )
    finally:
        server.stop()

    ratios = sorted(every / none for none, every in rounds)
    summary = (
        f"ratio {statistics.median(ratios):.3f} (median of {len(ratios)} rounds; "
        f"from {ratios[0]:.3f} to {ratios[-1]:.3f}; target <= 1.05). Epoch time "
        f"{statistics.median(n for n, _ in rounds):.2f} s without checkpoints, "
        f"{statistics.median(e for _, e in rounds):.2f} s with one every {EVERY} steps "
        f"({in_epochs / args.epochs:.1f} per epoch, {size / 1e6:.1f} MB each); training waited "
        f"{statistics.median(waits) * 1000:.0f} ms per save"
    )
    print(summary)
    if args.record:
        record(args, summary, rounds, (load_before, os.getloadavg()[0]))


def record(args, summary: str, rounds: list[tuple[float, float]], load: tuple[float, float]) -> None:
    command = ".venv/bin/python bench/checkpoint_overhead.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "record"
    )
    with open(ROOT / "bench" / "RESULTS.md", "a") as out:
        out.write(
            f"""
## Checkpoint overhead: every {EVERY} steps to S3 against none

Machine: 2 cores, 24 GB, Debian 12, Python {platform.python_version()}. S3 is moto's server on
127.0.0.1, at nice 19 as it stands in for a service on another machine; the uploader thread runs
at nice 10. Load average {load[0]:.1f} before and {load[1]:.1f} after: other jobs shared the machine.
Command: `{command}`, {time.strftime("%Y-%m-%d")}.

{summary}.

| round | median epoch without (s) | with a checkpoint every {EVERY} steps (s) | ratio |
| --- | --- | --- | --- |
"""
            + "".join(f"| {i + 1} | {n:.2f} | {e:.2f} | {e / n:.3f} |\n" for i, (n, e) in enumerate(rounds))
            + """
The study lost 20-30 s per save: training stopped while it wrote to Cloud Storage, and a cloud
node took 278% of the local time. Here a save blocks training only while it is written to local
disk; the upload and the publication of the pointer go on in the background.
"""
        )


if __name__ == "__main__":
    main()
