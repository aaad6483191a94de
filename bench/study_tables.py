"""The study's tables, measured on this machine, beside the study's own numbers.

Runs the study's sequential fashion_mnist training (the fashion-mlp preset as one process, five
epochs on all 60000 training images, then the 10000 test images), `pmlctl sweep` (cores, neurons,
hidden layers, epochs) and `pmlctl compare` (one process against 1 chief + 6 workers + 3 ps, for
one and three epochs), all on the real fashion_mnist (Debian's dataset-fashion-mnist), then prints
Markdown tables beside the study's numbers from ../shared/study/results.json: the sequential run
epoch by epoch, and each sweep row's loss, accuracy and time as a percentage of the first row.

    .venv/bin/python bench/study_tables.py [--out runs/study] [--epochs 2] [--repeats 1]

It takes about 25 minutes on 2 cores. With --reuse it only formats what an earlier run wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDY = pathlib.Path(os.environ.get("PML_SHARED", ROOT.parent / "shared")) / "study" / "results.json"
SWEEPS = {"cores": "cores", "neurons": "neurons_per_layer", "hidden-layers": "hidden_layers", "epochs": "epochs"}
BASE = ["--preset", "fashion-mlp"]  # real fashion_mnist: the Keras cache, else Debian's package


def pmlctl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "deploy", *args], cwd=ROOT, check=True)


def measure(out: pathlib.Path, epochs: int, repeats: int) -> None:
    # The study trained on all 60000 images and evaluated on the 10000 test images.
    pmlctl(
        "submit",
        *BASE,
        "--workers",
        "0",
        "--ps",
        "0",
        "--validation-split",
        "0",
        "--name",
        "study-sequential",
        "--model-dir",
        str(out / "sequential"),
    )
    cores = ",".join(str(n) for n in range(1, min(os.cpu_count() or 1, 4) + 1))
    pmlctl(
        "sweep",
        *BASE,
        "--epochs",
        str(epochs),
        "--repeats",
        str(repeats),
        "--out",
        str(out / "sweep"),
        "--param",
        f"cores={cores}",
        "--param",
        "neurons=32,128,256,512",
        "--param",
        "hidden-layers=1,4,8",
        "--param",
        "epochs=1,5,10,20",
    )
    for n in (1, 3):
        pmlctl(
            "compare",
            *BASE,
            "--epochs",
            str(n),
            "--repeats",
            str(repeats),
            "--shape",
            "6x3",
            "--out",
            str(out / f"compare-{n}"),
        )


def sequential_table(out: pathlib.Path, study: dict) -> list[str]:
    ours = [json.loads(line) for line in (out / "sequential" / "metrics.jsonl").read_text().splitlines() if line]
    result = json.loads((out / "sequential" / "result.json").read_text())
    lines = [
        "\n**sequential fashion_mnist (fashion-mlp, one process)**\n",
        "| epoch | accuracy | time (s) | study: accuracy | time (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row, theirs in zip(ours, study["epochs"], strict=False):
        lines.append(
            f"| {row['epoch']} | {row['accuracy']:.4f} | {row['seconds']:.2f} | {theirs['accuracy']} | "
            f"{theirs['seconds']} |"
        )
    evaluation = study["evaluation"]
    lines.append(
        f"| test ({evaluation['images']} images) | {result['test_accuracy']:.4f} | - | "
        f"{evaluation['accuracy']} | {evaluation['seconds']} |"
    )
    return lines


def sweep_tables(out: pathlib.Path, study: dict) -> list[str]:
    lines = []
    tables = {t["title"]: t for t in json.loads((out / "sweep" / "sweep.json").read_text())["tables"]}
    for ours_name, study_name in SWEEPS.items():
        rows, theirs = tables[ours_name]["rows"], {r["value"]: r for r in study[study_name]}
        lines += [
            f"\n**{ours_name}**\n",
            "| value | loss % | accuracy % | time % | time (s) | examples/s | study: loss % | accuracy % | time % |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in rows:
            s = theirs.get(int(row[ours_name]), {})
            lines.append(
                f"| {row[ours_name]} | {row['loss_pct']:.1f} | {row['accuracy_pct']:.2f} | "
                f"{row['seconds_pct']:.1f} | {row['seconds']:.1f} | {row['examples_per_sec']:.0f} | "
                f"{s.get('loss', '-')} | {s.get('accuracy', '-')} | {s.get('time', '-')} |"
            )
    return lines


def compare_tables(out: pathlib.Path, study: dict) -> list[str]:
    lines = [
        "\n**one process against 1 chief, 6 workers, 3 ps**\n",
        "| epochs | run | loss % | time % | time (s) | examples/s | speed-up | study: run | loss % | time % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, key in ((1, "one_epoch"), (3, "three_epochs")):
        rows = json.loads((out / f"compare-{n}" / "compare.json").read_text())["tables"][0]["rows"]
        theirs = study[key]
        for row, (their_name, their) in zip(
            rows, [("local", theirs["local"]), ("cloud_distributed", theirs["cloud_distributed"])], strict=False
        ):
            lines.append(
                f"| {n} | {row['shape']} | {row['loss_pct']:.1f} | {row['seconds_pct']:.1f} | "
                f"{row['seconds']:.1f} | {row['examples_per_sec']:.0f} | {row['speedup']:.2f}x | "
                f"{their_name} | {their['loss']} | {their['time']} |"
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "study")
    p.add_argument("--epochs", type=int, default=2, help="epochs of every sweep run but the epochs sweep")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="format the results of an earlier run")
    args = p.parse_args()
    if not args.reuse:
        measure(args.out, args.epochs, args.repeats)
    study = json.loads(STUDY.read_text())
    print(
        "\n".join(
            sequential_table(args.out, study["fashion_mnist_sequential"])
            + sweep_tables(args.out, study["parameter_sweeps_relative_to_benchmark"])
            + compare_tables(args.out, study["distributed_relative_to_local"])
        )
    )


if __name__ == "__main__":
    main()
