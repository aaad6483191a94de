"""Your own model (issue 24): a task module runs through all of the trainer's machinery.

The test task is not the study's: examples/tfrecord, the documented regression on TFRecord shards with
an MAE metric and no accuracy, in a package of its own named `trainer` (the layout Vertex AI
documents), which must neither shadow the trainer (`pml_trainer`) nor be shadowed by it. Bad task
code fails once, with exit code 2, in the user's own terms.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import metrics, pmlctl

from pml_trainer import exits

REGRESSION = pathlib.Path(__file__).parents[1] / "examples" / "tfrecord"
TASK = ["--task", "trainer/task.py", "--workspace", str(REGRESSION)]
SMALL = ["--batch-size", "64", "--epochs", "2", "--checkpoint-every-steps", "32"]


def trainer(*argv: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pml_trainer", *argv], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> pathlib.Path:
    """Four training shards of 1000 examples and an evaluation shard, written by the task's own script."""
    folder = tmp_path_factory.mktemp("shards")
    subprocess.run(
        [sys.executable, "make_data.py", str(folder), "--shards", "4", "--examples-per-shard", "1000"],
        cwd=REGRESSION,
        check=True,
        capture_output=True,
    )
    return folder


def data_params(shards: pathlib.Path) -> list[str]:
    return ["--task-param", f"train={shards}/train-*.tfrecord", "--task-param", f"eval={shards}/eval-*.tfrecord"]


def workspace(tmp_path: pathlib.Path, **files: str) -> pathlib.Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    for name, text in files.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
    return folder


GOOD = """
    import keras
    import numpy as np
    import tensorflow as tf

    import helpers


    def model(params):
        inputs = keras.Input(shape=(4,))
        return keras.Model(inputs, keras.layers.Dense(1)(helpers.layer(params)(inputs)))


    def train_data(params, shard):
        return tf.data.Dataset.from_tensor_slices((np.ones((64, 4), np.float32), np.ones((64, 1), np.float32)))


    def loss(params):
        return keras.losses.MeanSquaredError()


    def metrics(params):
        return [keras.metrics.MeanAbsoluteError(name="mae")]
"""

HELPERS = """
    import keras


    class Fails(keras.layers.Layer):
        def call(self, x, training=False):
            if training:
                explode()
            return x


    def layer(params):
        if params.get("fail") == "model":
            explode()
        return Fails() if params.get("fail") == "step" else keras.layers.Identity()


    def explode():
        raise ValueError("the user's own bug")
"""


# --- bad task code: once, exit 2, in the user's terms ----------------------------------------------


def assert_no_frames_of_ours(stderr: str) -> None:
    frames = re.findall(r'^  File "([^"]+)"', stderr, re.M)
    assert frames, stderr
    assert [f for f in frames if "/ws/" not in f] == [], stderr


def test_a_task_that_does_not_import_fails_at_once_naming_its_file_and_line(tmp_path):
    ws = workspace(tmp_path, t="import keras\n\ndef model(params)\n    return None\n")
    result = trainer("--task", "t.py", "--workspace", str(ws), "--model-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == exits.BAD_INPUT, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith("task t.py does not import: SyntaxError: expected ':' (t.py, line 3)"), result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_task_without_train_data_is_refused_before_training(tmp_path):
    ws = workspace(tmp_path, t="def model(params):\n    return None\n")
    result = trainer("--task", "t.py", "--workspace", str(ws), "--model-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == exits.BAD_INPUT
    assert (
        "task t.py defines no train_data(): a task needs model(params) and train_data(params, shard)" in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["model", "step"])
def test_an_error_in_the_users_code_shows_their_frames_and_one_line(tmp_path, where):
    """Raised in model() as it builds, or in a layer's call() while the training step is traced:
    the user's two files' frames, no frame of TensorFlow, Keras or ours, and a line naming where."""
    ws = workspace(tmp_path, t=GOOD, helpers=HELPERS)
    result = trainer(
        *("--task", "t.py", "--workspace", str(ws), "--task-param", f"fail={where}", "--epochs", "1"),
        *("--model-dir", str(tmp_path / "run")),
        cwd=tmp_path,
    )
    assert result.returncode == exits.BAD_INPUT, result.stderr
    assert_no_frames_of_ours(result.stderr)
    assert "helpers.py" in result.stderr and "t.py" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith("task t.py failed: ValueError: the user's own bug (helpers.py, line 19, in explode)"), last


# --- a regression task, in a package named trainer --------------------------------------------------


def test_a_regression_task_trains_alone_with_its_own_metric_names(tmp_path, shards):
    model_dir = tmp_path / "run"
    result = trainer(*TASK, *data_params(shards), *SMALL, "--model-dir", str(model_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    header = next(line for line in result.stdout.splitlines() if line.strip().startswith("epoch"))
    assert header.split() == ["epoch", "step", "loss", "mae", "val_loss", "val_mae", "seconds", "ex/s"]
    rows = metrics(model_dir)
    assert [set(r) for r in rows] == [
        {"epoch", "step", "loss", "mae", "val_loss", "val_mae", "seconds", "examples_per_sec"}
    ] * 2
    assert rows[-1]["val_mae"] < 0.3  # y = w.x + 0.5 + noise(0.1): learnt, not guessed (about 0.8)
    result_json = json.loads((model_dir / "result.json").read_text())
    assert set(result_json) >= {"test_loss", "test_mae", "task", "params", "code_digest"}
    assert "test_accuracy" not in result_json
    assert result_json["task"] == "trainer/task.py" and result_json["code_digest"].startswith("sha256:")
    run = json.loads((model_dir / "run.json").read_text())
    assert (run["task"], run["params"], run["code_digest"]) == (
        "trainer/task.py",
        result_json["params"],
        result_json["code_digest"],
    )
    # The SavedModel serves in a bare TensorFlow process: no pml_trainer, no workspace on the path.
    served = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import sys, json, tensorflow as tf\n"
            "f = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
            "print(json.dumps({'inputs': sorted(f.structured_input_signature[1]),"
            " 'value': f(features=tf.ones([3, 8]))['outputs'].numpy().tolist()}))",
            str(model_dir / "saved_model"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert served.returncode == 0, served.stderr[-2000:]
    out = json.loads(served.stdout.strip().splitlines()[-1])
    # Every feature 1: y = sum(linspace(-1, 1, 8)) + 0.5 = 0.5
    assert out["inputs"] == ["features"] and all(abs(v[0] - 0.5) < 0.3 for v in out["value"])


def test_a_changed_parameter_is_refused_and_changed_code_resumes_with_a_warning(tmp_path, shards):
    model_dir = tmp_path / "run"
    ws = tmp_path / "ws"
    subprocess.run(["cp", "-r", str(REGRESSION), str(ws)], check=True)
    task = ["--task", "trainer/task.py", "--workspace", str(ws), *data_params(shards)]
    first = trainer(*task, *SMALL, "--epochs", "1", "--model-dir", str(model_dir), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = json.loads((model_dir / "run.json").read_text())["code_digest"]

    refused = trainer(*task, "--task-param", "units=64", *SMALL, "--model-dir", str(model_dir), cwd=tmp_path)
    assert refused.returncode == exits.BAD_INPUT
    assert "--task-param units unset there, 64 here" in refused.stderr, refused.stderr

    with open(ws / "trainer" / "model.py", "a") as source:
        source.write("\n# a change\n")
    resumed = trainer(*task, *SMALL, "--model-dir", str(model_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((model_dir / "result.json").read_text())["code_digest"]
    assert before != after
    assert f"the task's code changed since this run began ({before} then, {after} now)" in resumed.stderr
    assert "resumed from checkpoint" in resumed.stderr


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["ps", "mirrored"])
def test_a_regression_task_trains_as_a_distributed_job(tmp_path, shards, pml_home, shape):
    """1 chief + 1 worker + 1 ps with the evaluator, and 1 chief + 2 mirrored workers: the task's
    metric names in metrics.jsonl, eval.jsonl, result.json and TensorBoard's events."""
    model_dir = tmp_path / "run"
    replicas = ["--workers", "1", "--ps", "1", "--evaluator"] if shape == "ps" else ["--workers", "2", "--ps", "0"]
    result = pmlctl(
        "submit", "--name", f"reg-{shape}", *TASK, *data_params(shards), *SMALL, *replicas,
        "--model-dir", str(model_dir), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(metrics(model_dir)[-1])
    result_json = json.loads((model_dir / "result.json").read_text())
    assert {"test_loss", "test_mae"} <= set(result_json) and result_json["test_mae"] < 0.3
    if shape == "ps":
        evaluations = [json.loads(line) for line in (model_dir / "eval.jsonl").read_text().splitlines()]
        assert evaluations and all({"test_loss", "test_mae"} <= set(e) for e in evaluations)
    tags = tensorboard_tags(model_dir / "logs" / "train")
    assert {"loss", "mae", "val_loss", "val_mae"} <= tags and "accuracy" not in tags


def tensorboard_tags(folder: pathlib.Path) -> set[str]:
    import tensorflow as tf

    tags = set()
    for events in folder.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(events)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags |= {value.tag for value in event.summary.value}
    return tags


@pytest.mark.slow
def test_bad_task_code_fails_a_job_once_without_restarts(tmp_path, pml_home):
    ws = workspace(tmp_path, t="import keras\n\ndef model(params)\n    return None\n")
    result = pmlctl(
        "submit", "--name", "bad", "--task", str(ws / "t.py"), "--workers", "1", "--ps", "1",
        "--model-dir", str(tmp_path / "run"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "(exit code 2)" in last and "SyntaxError: expected ':' (t.py, line 3)" in last, result.stderr[-3000:]
    assert "restart" not in result.stderr.lower(), result.stderr[-3000:]


# --- found by the second reading -----------------------------------------------------------------


def test_a_task_run_and_a_built_in_run_are_different_runs(tmp_path):
    """A model dir of the built-in mlp was taken for a task's run (no setting named by both
    differed), and --restart kept it."""
    from pml_trainer import fingerprint
    from pml_trainer.options import TrainOptions

    builtin = TrainOptions(model_dir=str(tmp_path))
    task = TrainOptions(model_dir=str(tmp_path), task="t.py", workspace=str(tmp_path))
    fingerprint.write(builtin, tmp_path)
    assert fingerprint.differences(fingerprint.read(task), task) == ["--task the built-in mlp there, t.py here"]
    assert not fingerprint.resumes(task.model_copy(update={"restart": True}))
    (tmp_path / "t.py").write_text("")
    fingerprint.write(task, tmp_path)
    assert fingerprint.differences(fingerprint.read(builtin), builtin) == ["--task t.py there, the built-in mlp here"]


def test_files_that_do_not_divide_evenly_are_split_by_example(tmp_path):
    """5 files over 4 mirrored readers: reader 0 took 2 files, the others 1, and each reader's
    batches are as large, so files 1-3 were read twice as often as files 0 and 4."""
    from pml_trainer.shard import Shard

    for i in range(5):
        (tmp_path / f"part-{i}").write_text("")
    shares = [Shard(4, i, seed="1-0", workspace=str(tmp_path), s3_endpoint=None) for i in range(4)]
    files = [s.files("part-*") for s in shares]
    assert all(not s.split_by_file for s in shares)
    assert all(f == files[0] and len(f) == 5 for f in files)  # one order, split by example after
    even = [Shard(5, i, seed="1-0", workspace=str(tmp_path), s3_endpoint=None) for i in range(5)]
    assert sorted(f for s in even for f in s.files("part-*")) == sorted(str(p) for p in tmp_path.glob("part-*"))
    assert all(s.split_by_file for s in even)


def test_xla_is_off_for_a_task_unless_asked(tmp_path):
    """--jit defaulted to on whenever --model was the mlp, as it is by default, for any task."""
    from pml_trainer.options import TrainOptions

    assert TrainOptions().compiles()
    assert not TrainOptions(task="t.py").compiles()
    assert TrainOptions(task="t.py", jit=True).compiles()


def test_an_outage_under_the_users_frames_is_still_an_outage(tmp_path):
    """train_data listing its files during a storage outage ended with 2, never retried."""
    from pml_trainer import exits, failures, task_code
    from pml_trainer.options import TrainOptions
    from pml_trainer.storage import StorageUnavailable

    ws = workspace(
        tmp_path, t="def model(params):\n    pass\n\ndef train_data(params, shard):\n    shard.files('s3://b/x/*')\n"
    )
    opts = TrainOptions(task="t.py", workspace=str(ws), model_dir=str(tmp_path / "run"))
    module = task_code.load(opts)

    class Down:
        def files(self, pattern):
            raise StorageUnavailable("s3://b/x: 503 SlowDown, retries exhausted")

    with pytest.raises(StorageUnavailable) as raised:
        module.train_data({}, Down())
    assert failures.reported(raised.value, opts) == exits.STORAGE_UNAVAILABLE


def test_shard_files_lets_an_outage_through(tmp_path, monkeypatch):
    """It became FileNotFoundError, which reads as the task's fault."""
    from pml_trainer import data_cache
    from pml_trainer.shard import Shard
    from pml_trainer.storage import StorageUnavailable

    def down(pattern, endpoint):
        raise StorageUnavailable(f"{pattern}: 503 SlowDown")

    monkeypatch.setattr(data_cache, "matching_files", down)
    with pytest.raises(StorageUnavailable):
        Shard(1, 0, seed="0", workspace=None, s3_endpoint=None).files("s3://b/x/*")
