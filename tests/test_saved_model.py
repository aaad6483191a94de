"""The exported SavedModel serves raw pixels in a bare TensorFlow process (issue 14, item 4)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow
REAL = pathlib.Path("/usr/share/datasets/fashion-mnist")

# Imports TensorFlow and numpy only: what a model server has.
SERVE = r"""
import gzip, json, sys
import numpy as np
import tensorflow as tf

export, data = sys.argv[1], sys.argv[2]
with gzip.open(f"{data}/t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28)
with gzip.open(f"{data}/t10k-labels-idx1-ubyte.gz") as f:
    labels = np.frombuffer(f.read()[8:], np.uint8)
serve = tf.saved_model.load(export).signatures["serving_default"]
spec = serve.structured_input_signature[1]["images"]
out = serve(images=tf.constant(images))
print(json.dumps({"input": [str(spec.dtype.name), spec.shape.as_list()],
                  "outputs": sorted(out), "sums": [float(out["probabilities"].numpy().sum(-1).min()),
                                                   float(out["probabilities"].numpy().sum(-1).max())],
                  "accuracy": float((out["class"].numpy() == labels).mean()),
                  "argmax_agrees": bool((out["probabilities"].numpy().argmax(-1) == out["class"].numpy()).all())}))
"""


@pytest.mark.skipif(
    not REAL.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (`make test` installs it where it runs as root with apt)",
)
def test_the_saved_model_takes_uint8_pixels_and_gives_the_test_accuracy(tmp_path):
    model_dir = tmp_path / "run"
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "--dataset",
            "fashion_mnist",
            "--epochs",
            "1",
            "--train-examples",
            "12000",
            "--model-dir",
            str(model_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = json.loads((model_dir / "result.json").read_text())
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(model_dir / "saved_model"), str(REAL)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert served.returncode == 0, served.stderr[-3000:]
    doc = json.loads(served.stdout.strip().splitlines()[-1])
    assert doc["input"] == ["uint8", [None, 28, 28]] and doc["outputs"] == ["class", "probabilities"]
    assert doc["sums"] == pytest.approx([1.0, 1.0], abs=1e-5) and doc["argmax_agrees"]
    assert doc["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-4)
    assert doc["accuracy"] > 0.75  # it learned
