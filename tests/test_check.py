"""`pmlctl check` (issue 24): a task tried once (its model, one batch, one training step, the
export) in the job's own environment, here this Python, reporting what it found; and a bad task
failing there as it would in a job: exit 2, the file and line named, the user's frames only.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import pmlctl, processes_mentioning, wait_for
from test_tasks import GOOD, HELPERS, REGRESSION, data_params, shards, workspace  # noqa: F401 (fixture)

from pml_trainer import exits

REGRESSION_TASK = ["--task", "trainer/task.py", "--workspace", str(REGRESSION)]
CHECK_SECONDS = 60  # the promise for a small task


def frames(stderr: str) -> list[str]:
    return re.findall(r'^  File "([^"]+)"', stderr, re.M)


def assert_told_in_the_users_terms(result, ws, line: str) -> None:
    """Exit 2, the last line the one error line, every frame shown one of the user's files."""
    assert result.returncode == exits.BAD_INPUT, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {line}", result.stderr
    assert "Traceback (most recent call last)" not in result.stderr, result.stderr
    assert all(f.startswith(str(ws)) for f in frames(result.stderr)), result.stderr
    for ours in ("pml_trainer", "/trainer/", "tensorflow", "keras", "<frozen"):
        assert ours not in "".join(frames(result.stderr)), result.stderr
    assert result.stdout == "", result.stdout


def test_the_regression_task_checks_in_its_own_terms_within_a_minute(tmp_path, shards):
    began = time.monotonic()
    result = pmlctl("check", *REGRESSION_TASK, *data_params(shards), "--batch-size", "64", cwd=tmp_path)
    seconds = time.monotonic() - began
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line[:12].strip(): line[12:] for line in result.stdout.strip().splitlines()[:-1]}
    assert lines["batch"] == "features float32 (64, 8), labels float32 (64, 1)"
    assert lines["model"].startswith("output float32 (64, 1), 321 parameters, Adam")
    assert lines["metrics"] == "loss, mae"
    step = re.fullmatch(r"loss (\S+) -> (\S+), mae (\S+) -> (\S+) on the batch", lines["one step"])
    assert step and float(step[2]) < float(step[1]), lines["one step"]  # the step learnt from the batch it reports on
    assert lines["evaluation"].startswith("loss ") and "mae" in lines["evaluation"]
    assert lines["SavedModel"] == "serving_default: features float32 (None, 8) -> outputs float32 (None, 1)"
    assert lines["epoch"] == "4096 examples: 64 steps"  # EXAMPLES_PER_EPOCH at batch 64
    assert "sha256:" in lines["task"]
    assert result.stdout.strip().splitlines()[-1].startswith("checked in ")
    assert result.stderr == "", result.stderr  # TensorFlow's own lines stay out without --verbose
    assert seconds < CHECK_SECONDS, seconds
    print(f"\npmlctl check of the regression task: {seconds:.1f}s")
    assert not (tmp_path / "runs").exists()  # nothing written to a model dir


def test_the_json_report_is_stdout_alone(tmp_path, shards):
    result = pmlctl("check", *REGRESSION_TASK, *data_params(shards), "-o", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["task"] == "trainer/task.py" and report["code_digest"].startswith("sha256:")
    assert report["batch"]["features"] == {"": {"dtype": "float32", "shape": [256, 8]}}
    assert report["outputs"] == {"": {"dtype": "float32", "shape": [256, 1]}}
    assert report["metrics"] == ["loss", "mae"]
    assert report["after_step"]["loss"] < report["before_step"]["loss"]
    # The step's own figures, computed before its update, are the batch's loss before it.
    assert report["in_step"]["loss"] == pytest.approx(report["before_step"]["loss"], rel=1e-4)
    assert report["serving"]["serving_default"]["inputs"] == {"features": {"dtype": "float32", "shape": [None, 8]}}
    assert report["seconds"] < CHECK_SECONDS


BAD = {
    "syntax": (
        {"t": "import keras\n\ndef model(params)\n    return None\n"},
        [],
        "task t.py does not import: SyntaxError: expected ':' (t.py, line 3)",
    ),
    "no train_data": (
        {"t": "def model(params):\n    return None\n"},
        [],
        "task t.py defines no train_data(): a task needs model(params) and train_data(params, shard); see docs/your-model.md",
    ),
    "model raises": (
        {"t": GOOD, "helpers": HELPERS},
        ["--task-param", "fail=model"],
        "task t.py failed while building its model: ValueError: the user's own bug (helpers.py, line 19, in explode)",
    ),
    "step raises": (
        {"t": GOOD, "helpers": HELPERS},
        ["--task-param", "fail=step"],
        "task t.py failed in the training step: ValueError: the user's own bug (helpers.py, line 19, in explode)",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_task_fails_the_check_in_the_users_terms(tmp_path, case):
    """Run from inside the workspace, as a user would: the import machinery's frames, which then
    seem to lie in the workspace, stay out too."""
    files, flags, line = BAD[case]
    ws = workspace(tmp_path, **files)
    result = pmlctl("check", "--task", "t.py", *flags, cwd=ws, timeout=120)
    assert_told_in_the_users_terms(result, ws, line)
    shown = {f.rpartition("/")[2] for f in frames(result.stderr)}
    # model() is called by name from t.py; the layer's call() by Keras, as the step is traced.
    assert shown == {"model raises": {"t.py", "helpers.py"}, "step raises": {"helpers.py"}}.get(case, set()), shown
    assert processes_mentioning(str(ws)) == []
    assert not (ws / "runs").exists()


MISFIT = """
    import keras
    import numpy as np
    import tensorflow as tf


    def model(params):
        inputs = keras.Input(shape=(4,))
        return keras.Model(inputs, keras.layers.Dense(3)(inputs))


    def train_data(params, shard):
        return tf.data.Dataset.from_tensor_slices((np.ones((64, 4), np.float32), np.ones((64, 2), np.float32)))


    def loss(params):
        return keras.losses.MeanSquaredError()


    def metrics(params):
        return []
"""


def test_a_loss_that_does_not_fit_the_model_names_the_stage_and_says_why(tmp_path):
    """No frame of the user's raised it, yet the check ran the user's model, data and loss: theirs
    to fix, in one line that names the stage, with no traceback of TensorFlow's."""
    ws = workspace(tmp_path, t=MISFIT)
    result = pmlctl("check", "--task", "t.py", cwd=ws, timeout=120)
    assert result.returncode == exits.BAD_INPUT, result.stderr
    assert result.stderr.startswith("error: task t.py failed while scoring the batch: "), result.stderr
    assert "Dimensions must be equal" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_ctrl_c_ends_the_check_at_once_with_130_and_nothing_left(tmp_path):
    ws = workspace(tmp_path, t=GOOD, helpers=HELPERS)
    check = subprocess.Popen(
        [sys.executable, "-m", "deploy", "check", "--task", "t.py"],
        cwd=ws,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Under way (its child, which loads TensorFlow, has started) and far from done. A fixed pause
    # here once sent the signal while pmlctl itself was still starting, on a loaded machine.
    wait_for(lambda: [p for p in processes_mentioning(str(ws)) if p != check.pid], 120, "the check's child", check)
    check.send_signal(signal.SIGINT)
    out, err = check.communicate(timeout=60)
    assert (check.returncode, out, err) == (exits.INTERRUPTED, "", "")
    assert processes_mentioning(str(ws)) == []


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["-t", "k8s"], "error: --target k8s: a check runs in a job's environment on this machine"),
        (["-o", "yaml"], "error: --output yaml: use table or json"),
        (["--task", "t.py", "--task-param", "units"], "error: --task-param 'units': write it as KEY=VALUE"),
    ],
)
def test_bad_input_is_one_line_before_anything_runs(tmp_path, flags, line):
    result = pmlctl("check", *flags, cwd=tmp_path, timeout=60)
    assert result.returncode == exits.BAD_INPUT
    assert result.stderr.startswith(line) and len(result.stderr.strip().splitlines()) == 1, result.stderr
