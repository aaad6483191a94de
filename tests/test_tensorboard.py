"""docs/trainer.md's `tensorboard --logdir <model-dir>/logs` works from the documented install
(`parallel-ml[tensorboard]`), and the event files hold the scalars it names (issue 14, item 5)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow
README_SCALARS = re.compile(r"TensorBoard scalars per epoch in `logs/train`: ([^.]+)\.", re.S)


def test_the_training_scalars_the_readme_names_are_in_the_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    named = [s.strip(" `\n") for s in README_SCALARS.search((ROOT / "docs" / "trainer.md").read_text())[1].split(",")]
    model_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "--epochs",
            "2",
            "--train-examples",
            "2000",
            "--batch-size",
            "100",
            "--model-dir",
            str(model_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The job in its own words, not TensorFlow's class names.
    assert "training mlp on synthetic, one process: 18 steps per epoch of 100 examples" in done.stderr + done.stdout
    assert "Strategy" not in done.stderr + done.stdout
    events = EventAccumulator(str(model_dir / "logs" / "train"), size_guidance={"tensors": 0}).Reload()
    tags = events.Tags()["tensors"]
    assert set(named) == set(tags), (named, tags)
    steps = [e.step for e in events.Tensors("loss")]
    assert len(steps) == 2 and steps == sorted(steps) and steps[-1] == 36  # 2 epochs of 18 steps
    # The documented command itself, as a user runs it: --inspect lists what it would serve.
    tensorboard = ROOT / ".venv" / "bin" / "tensorboard"
    command = [str(tensorboard)] if tensorboard.exists() else [sys.executable, "-m", "tensorboard.main"]
    inspected = subprocess.run(
        [*command, "--logdir", str(model_dir / "logs"), "--inspect"], capture_output=True, text=True, timeout=120
    )
    assert inspected.returncode == 0 and "loss" in inspected.stdout, inspected.stderr[-2000:]
