"""Real distributed jobs on the local target: TF servers as processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from conftest import (
    assert_nothing_left,
    latest_saved_step,
    metrics,
    pmlctl,
    saved_learning_rate,
    start_pmlctl,
    wait_for,
)
from storage_servers import S3Server

from pml_trainer import cpus
from pml_trainer.tf_config import TFConfig

pytestmark = pytest.mark.slow
SMALL = ["--train-examples", "20000", "--batch-size", "128"]


def test_parameter_server_job_learns_and_every_task_ends_by_itself(tmp_path, pml_home):
    model_dir = tmp_path / "model"
    result = pmlctl(
        "submit",
        "--name",
        "psjob",
        "--workers",
        "2",
        "--ps",
        "1",
        "--evaluator",
        "--epochs",
        "5",
        "--lr-decay",
        "cosine",
        "--model-dir",
        str(model_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    final = json.loads((model_dir / "result.json").read_text())
    assert final["test_accuracy"] >= 0.85
    epochs = metrics(model_dir)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert all(e["examples_per_sec"] > 0 and e["val_accuracy"] is not None for e in epochs)
    assert (model_dir / "saved_model" / "saved_model.pb").is_file()
    # The cosine reached its end on the chief's step count, though the workers set the rate.
    assert 0 < saved_learning_rate(model_dir) < 1e-5
    assert list((model_dir / "logs" / "train").glob("events.out.tfevents.*"))
    # The per-epoch table reached the user through the supervisor, prefixed by the task.
    assert re.search(r"chief-0 \|\s+5/5\s+\d+", result.stdout)
    # The 5 tasks share this machine's CPUs instead of each taking them all (pml_trainer.cpus).
    cluster = {role: [f"127.0.0.1:{port}"] for port, role in enumerate(["chief", "worker", "ps", "evaluator"])}
    cluster["worker"].append("127.0.0.1:9")
    _, why = cpus.intra_op_threads(0, TFConfig(cluster, "ps", 0))
    if why:  # "" on a machine of 1 CPU, where 1 thread per op is what TensorFlow takes anyway
        assert why.startswith(f"{max(1, int(cpus.available() // 5))} thread")
        assert re.search(rf"chief-0 \| .*{re.escape(why)}", result.stdout), result.stdout[-3000:]
        assert re.search(rf"ps-0 \| .*{re.escape(why)}", result.stdout)

    # The evaluator evaluated the last checkpoint, whose step is the final step.
    evaluations = [json.loads(line) for line in (model_dir / "eval.jsonl").read_text().splitlines()]
    assert evaluations[-1]["step"] == final["steps"] == epochs[-1]["step"]
    assert evaluations[-1]["test_accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-6)

    state = assert_nothing_left(pml_home, "psjob", model_dir)
    assert state["phase"] == "Succeeded"
    assert {(t["role"], t["exit_code"], t["ended"]) for t in state["tasks"]} == {
        ("chief", 0, "by itself"),
        ("worker", 0, "by itself"),
        ("ps", 0, "by itself"),
        ("evaluator", 0, "by itself"),
    }


def test_workers_only_job_trains_with_mirrored_workers(tmp_path, pml_home):
    model_dir = tmp_path / "model"
    result = pmlctl(
        "submit",
        "--name",
        "mirrored",
        "--workers",
        "2",
        "--ps",
        "0",
        "--epochs",
        "3",
        "--lr-decay",
        "cosine",
        "--model-dir",
        str(model_dir),
        *SMALL,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 mirrored replicas (the chief and 2 workers), synchronous updates" in result.stdout
    epochs = metrics(model_dir)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert json.loads((model_dir / "result.json").read_text())["test_accuracy"] > 0.5
    # The last block of 10 began 10 steps before the end of 420: the cosine is nearly at 0.
    assert 0 < saved_learning_rate(model_dir) < 1e-5
    assert_nothing_left(pml_home, "mirrored", model_dir)


def test_single_process_job_trains(tmp_path, pml_home):
    model_dir = tmp_path / "model"
    result = pmlctl(
        "submit",
        "--name",
        "alone",
        "--workers",
        "0",
        "--ps",
        "0",
        "--epochs",
        "3",
        "--model-dir",
        str(model_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "training mlp on synthetic, one process" in result.stdout
    assert json.loads((model_dir / "result.json").read_text())["test_accuracy"] >= 0.85
    assert [e["epoch"] for e in metrics(model_dir)] == [1, 2, 3]
    assert saved_learning_rate(model_dir) == pytest.approx(1e-3)  # no --lr-decay: the rate is kept


def test_failed_job_leaves_no_process_and_says_why_in_one_line(tmp_path, pml_home):
    """A dataset only the chief can find missing (pmlctl refuses a missing local file before any task
    starts): the job fails with the chief's code, and `status` says why."""
    s3 = S3Server(tmp_path / "s3")
    s3.start()
    try:
        s3.make_bucket("data")
        model_dir = tmp_path / "model"
        result = pmlctl(
            "submit",
            "--name",
            "nodata",
            "--workers",
            "1",
            "--ps",
            "1",
            "--dataset",
            "npz:s3://data/missing.npz",
            "--model-dir",
            str(model_dir),
            cwd=tmp_path,
            env={**os.environ, **s3.env()},
        )
    finally:
        s3.stop()
    assert result.returncode == 3  # DATA_UNAVAILABLE: permanent, not retried
    reason = "s3://data/missing.npz: nothing there; upload the dataset first or fix the location"
    said = f"error: {reason}"
    # The chief's own line, as it logged it (trainer/log.py), behind the supervisor's prefix.
    assert re.search(rf"^\s*chief-0 \| \S+Z ERROR chief-0 {re.escape(reason)}$", result.stdout, re.M), result.stdout
    assert "restarting" not in result.stdout
    assert result.stderr.splitlines() == [f"error: job nodata failed (exit code 3): chief-0: {said}"]
    state = assert_nothing_left(pml_home, "nodata", model_dir)
    assert state["phase"] == "Failed"
    shown = pmlctl("status", "nodata", cwd=tmp_path).stdout
    assert next(line for line in shown.splitlines() if line.startswith("chief-0")).endswith(f"  {said}")


def test_ctrl_c_stops_every_process(tmp_path, pml_home):
    model_dir = tmp_path / "model"
    job = start_pmlctl(
        "submit",
        "--name",
        "interrupted",
        "--workers",
        "2",
        "--ps",
        "1",
        "--epochs",
        "50",
        "--checkpoint-every-steps",
        "10",
        "--model-dir",
        str(model_dir),
        *SMALL,
        cwd=tmp_path,
    )
    # Interrupted in the second epoch: a checkpoint past the first epoch's end says training is under way
    # (Ctrl-C between two epochs found the chief still at the first epoch's step).
    before = wait_for(
        lambda: (
            (model_dir / "metrics.jsonl").is_file()
            and latest_saved_step(model_dir) > metrics(model_dir)[0]["step"]
            and latest_saved_step(model_dir)
        ),
        timeout=300,
        what="the second epoch",
        proc=job,
    )
    job.send_signal(signal.SIGINT)
    output, _ = job.communicate(timeout=120)
    assert job.returncode == 130, output[-3000:]
    state = assert_nothing_left(pml_home, "interrupted", model_dir)
    assert state["phase"] == "Cancelled"
    # Every task was asked with SIGTERM, as Kubernetes asks, before training ended: the chief saves
    # a checkpoint, and every task exits with the retryable "preempted" code (a 0 here would fail a
    # TFJob whose pods a node's shutdown ended, issue 26).
    codes = {(t["role"], t["index"]): (t["exit_code"], t["ended"]) for t in state["tasks"]}
    assert codes == {
        ("ps", 0): (143, "on SIGTERM"),
        ("worker", 0): (143, "on SIGTERM"),
        ("worker", 1): (143, "on SIGTERM"),
        ("chief", 0): (143, "on SIGTERM"),
    }
    assert "SIGTERM: checkpoint saved" in output
    assert latest_saved_step(model_dir) >= before  # the checkpoint saved on SIGTERM, or a newer one
