"""Throughput of our trainer against plain Keras `model.fit`, measured in one run.

Three runs on the same synthetic fashion_mnist-shaped data, model (mlp) and batch size:
  1. plain Keras `model.fit` in one process (the baseline),
  2. our trainer in one process (`python -m trainer`),
  3. our trainer as a job of 1 chief, 2 workers and 1 ps (`pmlctl submit`).
Each figure is the median examples/s of the epochs after the first (which pays for tracing and
for filling the data cache). Prints both ratios: 2 against 1, and 3 against 2.

    .venv/bin/python bench/throughput.py [--epochs 6] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

FIT_BASELINE = """
import json, sys, time
import keras
from trainer import data, models
from trainer.options import TrainOptions

opts = TrainOptions(**json.loads(sys.argv[1]))
keras.utils.set_random_seed(opts.seed)
splits = data.load(opts)
model = models.build(opts, splits.input_shape, splits.num_classes)
model.compile(optimizer=keras.optimizers.Adam(opts.learning_rate),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
steps = splits.train_size // opts.batch_size

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.monotonic()
    def on_epoch_end(self, epoch, logs=None):
        print(json.dumps({"examples_per_sec": steps * opts.batch_size / (time.monotonic() - self.start)}), flush=True)

model.fit(data.training_stream(splits, opts.batch_size, opts.seed)(), epochs=opts.epochs,
          steps_per_epoch=steps, callbacks=[Timer()], verbose=0)
"""


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:])


def fit_baseline(flags: dict) -> float:
    out = subprocess.run([sys.executable, "-c", FIT_BASELINE, json.dumps(flags)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return steady([json.loads(line)["examples_per_sec"] for line in out.splitlines() if line.startswith("{")])


def trainer_rates(model_dir: pathlib.Path) -> float:
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    return steady([json.loads(line)["examples_per_sec"] for line in lines])


def argv(flags: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps-per-execution", type=int, default=None,
                   help="for our trainer (default: the trainer's own default)")
    args = p.parse_args()
    flags = {"dataset": "synthetic", "epochs": args.epochs, "batch_size": args.batch_size, "validation_split": 0.1}
    ours = dict(flags, **({"steps_per_execution": args.steps_per_execution} if args.steps_per_execution else {}))
    env = {**os.environ, "PML_HOME": tempfile.mkdtemp()}
    work = pathlib.Path(tempfile.mkdtemp())

    started = time.monotonic()
    fit = fit_baseline(flags)
    subprocess.run([sys.executable, "-m", "trainer", *argv(ours), f"--model-dir={work / 'single'}"],
                   cwd=ROOT, check=True, capture_output=True, env=env)
    single = trainer_rates(work / "single")
    subprocess.run([sys.executable, "-m", "deploy", "submit", "--name", "bench-ps", "--workers", "2", "--ps", "1",
                    *argv(ours), f"--model-dir={work / 'ps'}"], cwd=ROOT, check=True, capture_output=True, env=env)
    ps_job = trainer_rates(work / "ps")

    print(f"machine: {os.cpu_count()} cores; synthetic 28x28x1, mlp, batch {args.batch_size}, "
          f"{args.epochs} epochs (median of epochs 2-{args.epochs}); {time.monotonic() - started:.0f}s in all")
    print(f"{'run':<44} {'examples/s':>11} {'ratio':>7}")
    print(f"{'keras model.fit, one process (baseline)':<44} {fit:>11.0f} {1.0:>7.2f}")
    print(f"{'our trainer, one process':<44} {single:>11.0f} {single / fit:>7.2f}  (vs model.fit)")
    print(f"{'our trainer, 1 chief + 2 workers + 1 ps':<44} {ps_job:>11.0f} {ps_job / single:>7.2f}  (vs our single process)")


if __name__ == "__main__":
    main()
