"""Throughput of our trainer against the strongest peer for each setup, measured in one run.

  one process   our trainer (`python -m pml_trainer`, XLA by default for the MLP) against Keras `model.fit`
                with steps_per_execution=10 and jit_compile=True, on the same model and input pipeline
                (for the CNN also against fit without jit_compile, the faster there);
  ps job        1 chief, 2 workers and 1 ps (`pmlctl submit --workers 2 --ps 1`) against the custom
                loop of TensorFlow's parameter-server guide (bench/ps_guide_loop.py) on the same
                data, model, batch and steps per scheduled function, with the same tasks;
  mirrored      3 mirrored replicas (`pmlctl submit --workers 2 --ps 0`) against our one process.

Cases: the default MLP on the real fashion_mnist at batch 256 and 1024, the flowers CNN on
synthetic 64x64x3 images at batch 256 and 1024, and mirrored workers at batch 32, 256 and 1024.
Each figure is the median examples/s of the epochs after the first (which pays for tracing and
compiling). The runs of a case alternate, one of each per round, so that both see the same load;
each ratio is the median of the rounds' ratios. The load average is printed beside each case.

    .venv/bin/python bench/throughput.py [--rounds 3] [--parts one,ps,mirrored] [--models MLP,CNN] [--no-jit-rows]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
MLP = {"dataset": "fashion_mnist", "epochs": 6}
# 5120 synthetic images (4608 trained on) fit the input pipeline's cache, as fashion_mnist does:
# the cases measure training, and bench/pipeline.py measures the pipelines. 5 epochs, so that each
# run's median is of 4 epochs: with 3, it was of 2, and rounds' ratios spread by 0.14.
CNN = {"dataset": "synthetic:64x64x3", "model": "cnn", "train_examples": 5120, "epochs": 5}
MIRRORED = {"dataset": "fashion_mnist", "train_examples": 10000, "epochs": 3}

FIT_PEER = """
import json, sys, time
import keras
from pml_trainer import data, models, pipeline
from pml_trainer.options import TrainOptions

opts = TrainOptions(**json.loads(sys.argv[1]))
keras.utils.set_random_seed(opts.seed)
splits = data.load(opts)
model = models.build(opts, splits.input_shape, splits.num_classes)
model.compile(optimizer=keras.optimizers.Adam(opts.learning_rate),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
              steps_per_execution=10, jit_compile=sys.argv[2] == "True")
steps = splits.train_size // opts.batch_size

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.monotonic()
    def on_epoch_end(self, epoch, logs=None):
        print(json.dumps({"examples_per_sec": steps * opts.batch_size / (time.monotonic() - self.start)}), flush=True)

model.fit(pipeline.training_stream(lambda count, index: splits.train(), opts.batch_size, opts.seed, augment=opts.augment)(), epochs=opts.epochs,
          steps_per_epoch=steps, callbacks=[Timer()], verbose=0)
"""


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:])


def argv(flags: dict) -> list[str]:
    """Flags as both the trainer and pmlctl take them: a switch as --name or --no-name."""

    def one(name, value):
        name = name.replace("_", "-")
        if isinstance(value, bool):
            return f"--{name}" if value else f"--no-{name}"
        return f"--{name}={value}"

    return [one(k, v) for k, v in flags.items()]


def json_rates(out: str) -> float:
    return steady([json.loads(line)["examples_per_sec"] for line in out.splitlines() if line.startswith("{")])


def trainer_rates(model_dir: pathlib.Path) -> float:
    return json_rates((model_dir / "metrics.jsonl").read_text())


def run(cmd: list[str], **kwargs) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kwargs)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


class Runs:
    """The ways of running one case, each returning its steady examples/s."""

    def __init__(self):
        self.env = {**os.environ, "PML_HOME": tempfile.mkdtemp(prefix="pml-bench-")}
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="bench-"))
        self.count = 0

    def _model_dir(self) -> pathlib.Path:
        self.count += 1
        return self.work / f"run{self.count}"

    def fit(self, flags: dict, jit_compile: bool = True) -> float:
        return json_rates(run([sys.executable, "-c", FIT_PEER, json.dumps(flags), str(jit_compile)]))

    def ours(self, flags: dict) -> float:
        model_dir = self._model_dir()
        run([sys.executable, "-m", "pml_trainer", *argv(flags), f"--model-dir={model_dir}"], env=self.env)
        return trainer_rates(model_dir)

    def job(self, flags: dict, workers: int, ps: int) -> float:
        model_dir = self._model_dir()
        run(
            [
                sys.executable,
                "-m",
                "deploy",
                "submit",
                "--name",
                f"bench{self.count}",
                "--workers",
                str(workers),
                "--ps",
                str(ps),
                "--no-evaluator",
                *argv(flags),
                f"--model-dir={model_dir}",
            ],
            env=self.env,
        )
        return trainer_rates(model_dir)

    def guide(self, flags: dict) -> float:
        ports = free_ports(4)
        cluster = {
            "chief": [f"127.0.0.1:{ports[0]}"],
            "worker": [f"127.0.0.1:{p}" for p in ports[1:3]],
            "ps": [f"127.0.0.1:{ports[3]}"],
        }
        script = str(ROOT / "bench" / "ps_guide_loop.py")
        env = {**os.environ, "GRPC_FAIL_FAST": "use_caller"}  # as the guide asks of every task
        servers = [
            subprocess.Popen(
                [sys.executable, script, "serve", "--cluster", json.dumps(cluster), "--role", role, "--index", str(i)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for role in ("worker", "ps")
            for i in range(len(cluster[role]))
        ]
        try:
            return json_rates(
                run(
                    [
                        sys.executable,
                        script,
                        "train",
                        "--cluster",
                        json.dumps(cluster),
                        "--data",
                        str(FASHION_MNIST),
                        "--batch-size",
                        str(flags["batch_size"]),
                        "--epochs",
                        str(flags["epochs"]),
                    ],
                    env=env,
                )
            )
        finally:
            for server in servers:  # tf.distribute.Server.join() never returns by itself
                server.kill()
                server.wait()


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def load() -> str:
    return pathlib.Path("/proc/loadavg").read_text().split()[0]


def case(title: str, rounds: int, peer: tuple[str, callable], others: list[tuple[str, callable]]) -> list[str]:
    """Alternate the peer and the others for `rounds` rounds; a table row for each."""
    rates = {name: [] for name, _ in [peer, *others]}
    loads = [load()]
    for _ in range(rounds):
        for name, measure in [peer, *others]:
            rates[name].append(measure())
        loads.append(load())
    peer_name = peer[0]
    rows = []
    for name, values in rates.items():
        ratio = statistics.median(v / p for v, p in zip(values, rates[peer_name], strict=False))
        rows.append(
            f"| {title} | {name} | {statistics.median(values):.0f} | "
            f"{' / '.join(f'{v:.0f}' for v in values)} | {ratio:.2f} | {' '.join(loads)} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", default="one,ps,mirrored", help="which comparisons: one, ps, mirrored")
    p.add_argument("--models", default="MLP,CNN", help="which models the one-process part covers")
    p.add_argument("--batches", default="256,1024", help="the one-process part's batch sizes")
    p.add_argument(
        "--no-jit-rows",
        action="store_true",
        help="also measure our trainer and jobs with the other --jit setting than their default",
    )
    args = p.parse_args()
    parts, runs, started = args.parts.split(","), Runs(), time.monotonic()
    print(f"machine: {os.cpu_count()} cores; {args.rounds} rounds; median examples/s of the epochs after the first")
    print("| case | run | examples/s (median) | each round | ratio to the first row | load average |")
    print("| --- | --- | --- | --- | --- | --- |")

    def ours(flags, **more):
        return lambda: runs.ours({**flags, **more})

    if "one" in parts:
        for name, base in (("MLP", MLP), ("CNN", CNN)):
            if name not in args.models.split(","):
                continue
            for batch in [int(b) for b in args.batches.split(",")]:
                flags = {**base, "batch_size": batch}
                others = [("our trainer, one process", ours(flags))]
                if name == "CNN":  # XLA's convolutions are the slower on CPU: fit without it is the better peer
                    others.insert(
                        0,
                        (
                            "Keras fit, steps_per_execution 10, no jit_compile",
                            lambda: runs.fit(flags, jit_compile=False),
                        ),
                    )
                if args.no_jit_rows:  # the other setting than the default of the model
                    jit = name == "CNN"
                    others.append((f"our trainer, one process, {'--jit' if jit else '--no-jit'}", ours(flags, jit=jit)))
                case(
                    f"{name}, batch {batch}",
                    args.rounds,
                    ("Keras fit, steps_per_execution 10, jit_compile", lambda: runs.fit(flags)),
                    others,
                )
    if "ps" in parts:
        for batch in (256, 1024):
            flags = {**MLP, "batch_size": batch}
            others = [("our ps job, 1 chief + 2 workers + 1 ps", lambda: runs.job(flags, 2, 1))]
            if args.no_jit_rows:
                others.append(("our ps job, --no-jit", lambda: runs.job({**flags, "jit": False}, 2, 1)))
            case(
                f"MLP, batch {batch}, ps",
                args.rounds,
                ("TF guide's ps loop, 2 workers + 1 ps", lambda: runs.guide(flags)),
                others,
            )
    if "mirrored" in parts:
        for batch in (32, 256, 1024):
            flags = {**MIRRORED, "batch_size": batch}
            others = [("3 mirrored replicas (chief + 2 workers)", lambda: runs.job(flags, 2, 0))]
            if args.no_jit_rows:
                others.append(("3 mirrored replicas, --no-jit", lambda: runs.job({**flags, "jit": False}, 2, 0)))
            case(f"MLP, batch {batch}, mirrored", args.rounds, ("our trainer, one process", ours(flags)), others)
    print(f"{time.monotonic() - started:.0f}s in all")


if __name__ == "__main__":
    main()
