"""`pmlctl sweep` and `pmlctl compare`: real local runs, and the files they write."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import pmlctl

pytestmark = pytest.mark.slow
TINY = ["--train-examples", "3000", "--batch-size", "100", "--epochs", "2"]


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's signature and IHDR chunk; fails on anything else."""
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and blob[12:16] == b"IHDR" and blob.endswith(b"IEND\xaeB`\x82")
    return int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")


def check_percentages(rows: list[dict], runs: dict, column: str):
    """Every mean comes from the runs, and every percentage from the means."""
    for row in rows:
        measured = runs[str(row[column])]
        for metric in ("loss", "accuracy", "seconds", "examples_per_sec"):
            assert row[metric] == pytest.approx(sum(r[metric] for r in measured) / len(measured))
            assert row[f"{metric}_pct"] == pytest.approx(100 * row[metric] / rows[0][metric])
    for metric in ("loss", "accuracy", "seconds", "examples_per_sec"):
        assert rows[0][f"{metric}_pct"] == 100.0


def test_sweep_over_two_values(tmp_path, pml_home):
    out = tmp_path / "out"
    result = pmlctl("sweep", "--param", "neurons=16,48", "--repeats", "2", "--out", str(out), *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[1/4] neurons=16, repeat 1/2" in result.stderr and "[4/4] neurons=48, repeat 2/2, about" in result.stderr

    doc = json.loads((out / "sweep.json").read_text())
    table = doc["tables"][0]
    rows, runs = table["rows"], table["runs"]
    assert [r["neurons"] for r in rows] == ["16", "48"] and all(len(runs[v]) == 2 for v in ("16", "48"))
    check_percentages(rows, runs, "neurons")
    # Repeats use their own seeds, so the spread is a real measurement.
    assert runs["16"][0]["loss"] != runs["16"][1]["loss"]
    assert rows[0]["loss_spread"] == pytest.approx(abs(runs["16"][0]["loss"] - runs["16"][1]["loss"]) / 2**0.5)
    # Each run trained its own model with the value asked for.
    for value in ("16", "48"):
        for run in runs[value]:
            assert json.loads(open(f"{run['model_dir']}/result.json").read())["epochs"] == 2

    with open(out / "sweep.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["value"] for r in csv_rows] == ["16", "48"]
    assert float(csv_rows[1]["seconds_pct"]) == pytest.approx(rows[1]["seconds_pct"])
    assert png_size(out / "sweep.png") == (1000, 360)
    assert "neurons" in result.stdout and "100.0" in result.stdout


def test_cores_limits_the_training_processes(tmp_path, pml_home):
    out = tmp_path / "out"
    result = pmlctl("sweep", "--param", "cores=1", "--out", str(out), *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "sweep.json").read_text())["tables"][0]["runs"]["1"][0]
    assert len(run["cpus"]) == 1  # the kernel's CPU affinity of the training process


def test_compare_two_shapes_against_one_process(tmp_path, pml_home):
    out = tmp_path / "out"
    result = pmlctl("compare", "--shape", "1x0", "--shape", "1x1", "--out", str(out), *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((out / "compare.json").read_text())["tables"][0]
    rows = table["rows"]
    assert [r["shape"] for r in rows] == ["1 process", "1 chief, 1 worker, 0 ps", "1 chief, 1 worker, 1 ps"]
    check_percentages(rows, table["runs"], "shape")
    for row in rows:
        assert row["speedup"] == pytest.approx(rows[0]["seconds"] / row["seconds"])
    assert png_size(out / "compare.png")[0] == 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--param", "neurons"], "write it as NAME=V1,V2"),
        (["sweep", "--param", "colour=1,2"], "colour is not a trainer flag"),
        (["sweep", "--param", "neurons=8,-1"], "--param neurons=-1: Input should be greater than or equal to 1"),
        (["sweep", "--param", "cores=0"], "use a whole number from 1 to"),
        (["compare", "--shape", "six"], "write it as WORKERSxPS"),
        (["compare", "--shape", "0x2"], "ps need at least one worker"),
        (["compare", "--shape", "1x0", "--preset", "imagenet"], "--preset imagenet: unknown preset"),
    ],
)
def test_bad_experiment_input_starts_nothing(tmp_path, pml_home, args, message):
    result = pmlctl(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists() and not pml_home.exists()
