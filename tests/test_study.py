"""The study's sequential fashion_mnist run, reproduced on the real data: the `fashion-mlp` preset
as one process learns what the study's network learned, epoch for epoch (issue 14)."""

from __future__ import annotations

import json
import pathlib

import pytest
from conftest import pmlctl, shared_dir

pytestmark = pytest.mark.slow
REAL = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not REAL.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (`make test` installs it where it runs as root with apt)",
)
def test_the_fashion_mlp_preset_learns_as_the_study_did(tmp_path, pml_home):
    study = json.loads((shared_dir() / "study" / "results.json").read_text())["fashion_mnist_sequential"]
    model_dir = tmp_path / "seq"
    done = pmlctl(
        "submit",
        "--preset",
        "fashion-mlp",
        "--workers",
        "0",
        "--ps",
        "0",
        "--validation-split",
        "0",
        "--epochs",
        "2",
        "--name",
        "study-seq",
        "--model-dir",
        str(model_dir),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ours = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in ours] == [1875, 3750]  # all 60000 images at batch 32, no flag for the data
    for row, theirs in zip(ours, study["epochs"], strict=False):
        assert row["accuracy"] == pytest.approx(theirs["accuracy"], abs=0.01), (row, theirs)
