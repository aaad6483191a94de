"""TFRecord shards: the trainer's input pipeline for the worked example (examples/tfrecord) against
the best plain tf.data pipeline for the same files, side by side in one run, and whether training
waits for it.

Pipelines alone (examples/s of batches, one process, no training), one at a time, in turns, round
by round:

- trainer, example task: `Task.train_data` as the loop builds it, for examples/tfrecord as it is
  (four files interleaved, records parsed 256 at a time, then handed on one by one);
- trainer, records parsed one at a time: the same, with `train_data` written the way most first
  tasks are, `TFRecordDataset(files).map(parse_single_example)`;
- trainer, parallel reads: the example with `TFRecordDataset(files, num_parallel_reads=AUTOTUNE)`,
  as tf.data's guide suggests for remote files (tensorflow.org/guide/data_performance,
  "Parallelizing data extraction"); the data cache makes them local;
- plain tf.data, two ways, with nothing to constrain them: the files shuffled and interleaved
  (sequentially, or in parallel threads with deterministic=False), the serialized records shuffled,
  batched, then parsed a batch at a time in parallel, prefetched; AUTOTUNE throughout. The faster
  of the two is "best".

Training (`--train`): `python -m pml_trainer` on one process, the example's model, reading the
shards, against the same job with the same examples held in memory (the trainer's in-memory path);
examples/s of each epoch after the first, from metrics.jsonl. One job at a time.

    .venv/bin/python bench/input_pipeline.py [--shards 16] [--examples-per-shard 8000] [--train]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import tensorflow as tf

from pml_trainer.options import TrainOptions
from pml_trainer.task import Task

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "tfrecord"
A = tf.data.AUTOTUNE

# Task modules beside the example's package, in a workspace of the benchmark's own: the example
# with another train_data.
ONE_AT_A_TIME = """
import tensorflow as tf
from trainer.records import SPEC
from trainer.task import *  # noqa: F403 (the example, but for train_data)


def parse_one(record):
    parsed = tf.io.parse_single_example(record, SPEC)
    return parsed["x"], parsed["y"]


def train_data(params, shard):
    return tf.data.TFRecordDataset(shard.files(params["train"])).map(parse_one)
"""
IN_MEMORY = """
import numpy as np
import tensorflow as tf
from trainer import task as example
from trainer.task import *  # noqa: F403 (the example, but for train_data)


def train_data(params, shard):
    batches = list(example.train_data(params, shard).batch(65536).as_numpy_iterator())
    x, y = (np.concatenate(part) for part in zip(*batches))
    return tf.data.Dataset.from_tensor_slices((x, y))
"""
PARALLEL_READS = """
import tensorflow as tf
from trainer.records import parse
from trainer.task import *  # noqa: F403 (the example, but for train_data)


def train_data(params, shard):
    records = tf.data.TFRecordDataset(shard.files(params["train"]), num_parallel_reads=tf.data.AUTOTUNE)
    return records.batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
"""


def workspace(folder: pathlib.Path, examples: int) -> pathlib.Path:
    """The example's package, and the variants beside it; each with an epoch of `examples`: one
    pass over the benchmark's shards (the example's own 4096 is one pass over its default data)."""
    ws = folder / "ws"
    shutil.copytree(EXAMPLE / "trainer", ws / "trainer")
    epoch = f"\nEXAMPLES_PER_EPOCH = {examples}\n"
    (ws / "example.py").write_text(f"from trainer.task import *  # noqa: F403\n{epoch}")
    (ws / "one_at_a_time.py").write_text(ONE_AT_A_TIME + epoch)
    (ws / "in_memory.py").write_text(IN_MEMORY + epoch)
    (ws / "parallel_reads.py").write_text(PARALLEL_READS + epoch)
    return ws


def trainer_stream(ws: pathlib.Path, task: str, pattern: str, batch: int):
    opts = TrainOptions(task=task, workspace=str(ws), params={"train": pattern, "eval": pattern}, batch_size=batch)
    return Task(opts).train_data(batch, opts.seed, 0)()


def plain_stream(pattern: str, batch: int, parallel_reads: bool):
    from trainer.records import parse  # the example's (a batch at a time), imported by the Task above

    files = tf.data.Dataset.list_files(pattern, shuffle=True)
    if parallel_reads:
        records = files.interleave(tf.data.TFRecordDataset, cycle_length=4, num_parallel_calls=A, deterministic=False)
    else:
        records = files.interleave(tf.data.TFRecordDataset, cycle_length=4)
    return (
        records.shuffle(10_000)
        .repeat()
        .batch(batch, drop_remainder=True)
        .map(parse, num_parallel_calls=A, deterministic=False)
        .prefetch(A)
    )


def pipelines(args, ws: pathlib.Path, pattern: str) -> None:
    streams = {
        "trainer, example task": lambda: trainer_stream(ws, "trainer/task.py", pattern, args.batch_size),
        "trainer, records parsed one at a time": lambda: trainer_stream(
            ws, "one_at_a_time.py", pattern, args.batch_size
        ),
        "trainer, parallel reads": lambda: trainer_stream(ws, "parallel_reads.py", pattern, args.batch_size),
        "plain tf.data, files interleaved": lambda: plain_stream(pattern, args.batch_size, False),
        "plain tf.data, parallel reads": lambda: plain_stream(pattern, args.batch_size, True),
    }
    rates: dict[str, list[float]] = {name: [] for name in streams}
    for _ in range(args.rounds):
        for name, make in streams.items():
            # One pipeline at a time: an idle one's threads would still fill its buffers.
            iterator = iter(make())
            for _ in range(args.steps):  # fill the shuffle buffer, let AUTOTUNE settle
                next(iterator)
            started = time.perf_counter()
            for _ in range(args.steps):
                next(iterator)
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - started))
            del iterator
    best = max(statistics.median(rates[name]) for name in rates if name.startswith("plain"))
    print(f"\n| pipeline alone | examples/s, median of {args.rounds} rounds | range | against best tf.data |")
    print("| --- | --- | --- | --- |")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {min(values):.0f}-{max(values):.0f} | {median / best:.2f} |", flush=True)


def training(args, ws: pathlib.Path, folder: pathlib.Path, pattern: str) -> None:
    jobs = {
        "reading the shards (example task)": "example.py",
        "records parsed one at a time": "one_at_a_time.py",
        "parallel reads": "parallel_reads.py",
        "the same examples in memory": "in_memory.py",
    }
    print(f"\n| training, one process, batch {args.batch_size} | examples/s, epochs 2-{args.epochs} | steps/s |")
    print("| --- | --- | --- |")
    for name, task in jobs.items():
        model_dir = folder / f"run-{task.replace('/', '-')}"
        run = subprocess.run(
            [sys.executable, "-m", "pml_trainer", "--task", task, "--workspace", str(ws),
             "--task-param", f"train={pattern}", "--task-param", f"eval={pattern.replace('train-*', 'eval-*')}",
             "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--model-dir", str(model_dir)],
            capture_output=True, text=True,
        )  # fmt: skip
        if run.returncode != 0:
            raise SystemExit(f"{name}: the trainer failed:\n{run.stderr[-3000:]}")
        rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [r["examples_per_sec"] for r in rows[1:]]
        rate = statistics.median(rates)
        print(f"| {name} | {rate:.0f} ({min(rates):.0f}-{max(rates):.0f}) | {rate / args.batch_size:.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--examples-per-shard", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=300, help="batches a round times for each pipeline")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--train", action="store_true", help="also train the example on the shards and from memory")
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="tfrecord-bench-"))
    try:
        data = folder / "data"
        subprocess.run(
            [sys.executable, "make_data.py", str(data), "--shards", str(args.shards),
             "--examples-per-shard", str(args.examples_per_shard)],
            cwd=EXAMPLE, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        pattern = str(data / "train-*.tfrecord")
        ws = workspace(folder, args.shards * args.examples_per_shard)
        print(
            f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, tensorflow {tf.__version__}; "
            f"{args.shards} shards of {args.examples_per_shard} examples, batch {args.batch_size}; load average "
            f"{pathlib.Path('/proc/loadavg').read_text().split()[0]}"
        )
        pipelines(args, ws, pattern)
        if args.train:
            training(args, ws, folder, pattern)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
