"""--jit (issue 16): XLA compiles the mlp's training by default, --no-jit turns it off, and both learn the same."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, metrics

from pml_trainer.options import parse_args


def test_jit_is_on_by_default_for_the_mlp_only_and_turned_off_either_way():
    assert parse_args([]).compiles() and not parse_args(["--model", "cnn"]).compiles()
    assert parse_args(["--model", "cnn", "--jit"]).compiles()
    assert not parse_args(["--no-jit"]).compiles()
    assert parse_args(["--no-jit"]).jit is False
    assert parse_args(["--jit", "false"]).jit is False
    assert parse_args(["--no-jit", "--jit"]).jit is True  # the last word counts, as with pmlctl's switches
    assert parse_args(parse_args(["--no-jit"]).to_argv()).jit is False  # how pmlctl hands it to the tasks


@pytest.mark.slow
def test_a_jit_run_learns_what_a_run_without_it_learns(tmp_path):
    """Blocks of 4 steps cut at 6-step checkpoints and 23-step epochs: the unrolled program, the
    one-step program after it and whole blocks all run. XLA may round differently, not learn otherwise."""
    job = [
        "--dataset",
        "synthetic",
        "--train-examples",
        "1300",
        "--batch-size",
        "50",
        "--epochs",
        "3",
        "--steps-per-execution",
        "4",
        "--checkpoint-every-steps",
        "6",
    ]
    rows = {}
    for switch in ("--jit", "--no-jit"):
        model_dir = tmp_path / switch
        done = subprocess.run(
            [sys.executable, "-m", "pml_trainer", *job, switch, "--model-dir", str(model_dir)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        rows[switch] = metrics(model_dir)
    jit, plain = rows["--jit"], rows["--no-jit"]
    print("measured: loss", [round(r["loss"], 4) for r in jit], "against", [round(r["loss"], 4) for r in plain])
    assert [r["step"] for r in jit] == [r["step"] for r in plain] == [23, 46, 69]
    assert plain[-1]["accuracy"] > plain[0]["accuracy"] + 0.2  # it learns: the comparison means something
    for a, b in zip(jit, plain, strict=False):
        assert a["loss"] == pytest.approx(b["loss"], rel=0.01)
        assert abs(a["accuracy"] - b["accuracy"]) < 0.01
        assert abs(a["val_accuracy"] - b["val_accuracy"]) < 0.01
