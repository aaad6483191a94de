"""The evaluator's final evaluation lands before the chief exits, whatever deletes the pods after.

Under Kubeflow's TFJob a job has succeeded as soon as its chief exits 0, and with
`cleanPodPolicy: Running` the operator then deletes every pod still running, the evaluator
included. So the evaluation of the last checkpoint must be in eval.jsonl before the chief exits:
the tests play the operator, and kill the evaluator the moment the chief has exited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from conftest import latest_saved_step, wait_for

from deploy import local
from deploy.spec import JobSpec
from pml_trainer import chief_state
from pml_trainer.tf_config import control_address

pytestmark = pytest.mark.slow
STEPS = 2 * (5400 // 128)  # 2 epochs of 6000 examples less 10% for validation
FINAL_EVALUATION = "evaluating its last checkpoint before confirming the end"


def run_job_late_evaluator(tmp_path, sigterm_during_final_evaluation: bool = False) -> dict:
    """A chief and an evaluator that is held back until the chief says the job is done; the
    evaluator is killed as soon as the chief exits. Returns the logs, exit codes and rows."""
    model_dir = tmp_path / "model"
    spec = JobSpec(
        name="last",
        replicas={"workers": 0, "ps": 0, "evaluator": 1},
        trainer={"epochs": 2, "train_examples": 6000, "batch_size": 128, "model_dir": str(model_dir)},
    )
    tasks = {t.role: t for t in local.plan(spec, tmp_path).tasks}
    procs: dict[str, subprocess.Popen] = {}
    try:
        for role in ("evaluator", "chief"):
            task = tasks[role]
            # The evaluator's test split is 50,000 synthetic examples (the chief's is 1,000): its
            # evaluation takes seconds, as a real one does, where the chief leaves within a second.
            argv = task.argv + (["--train-examples", "300000"] if role == "evaluator" else [])
            with open(task.log, "wb") as log:
                procs[role] = subprocess.Popen(
                    argv, cwd=tmp_path, env={**os.environ, **task.env}, stdout=log, stderr=subprocess.STDOUT
                )
            if role == "evaluator":
                # A late evaluator (its pod started last, or it was busy with an older checkpoint):
                # stopped before Python has imported anything, let alone asked the chief anything,
                # and let go once the chief says the job is done.
                procs[role].send_signal(signal.SIGSTOP)
        host, port = control_address(tasks["chief"].address)
        until(
            lambda: (chief_state.fetch_state(host, port, "test", timeout=1.0) or {}).get("state") == chief_state.DONE,
            procs["chief"],
            tasks["chief"].log,
            "the chief to say the job is done",
        )
        procs["evaluator"].send_signal(signal.SIGCONT)
        if sigterm_during_final_evaluation:
            until(
                lambda: FINAL_EVALUATION in tasks["evaluator"].log.read_text(),
                procs["evaluator"],
                tasks["evaluator"].log,
                "the evaluator's final evaluation",
            )
            procs["evaluator"].send_signal(signal.SIGTERM)
        # The operator: the chief's exit ends the job, and the evaluator is deleted if still running
        # (after SIGTERM it is given the grace period that it was already given).
        chief_code = procs["chief"].wait(timeout=400)
        if sigterm_during_final_evaluation:
            procs["evaluator"].wait(timeout=30)
        procs["evaluator"].kill()
        procs["evaluator"].wait(timeout=30)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    eval_log = model_dir / "eval.jsonl"
    return {
        "chief": tasks["chief"].log.read_text(),
        "evaluator": tasks["evaluator"].log.read_text(),
        "chief_code": chief_code,
        "evaluator_code": procs["evaluator"].returncode,
        "result": json.loads((model_dir / "result.json").read_text()),
        "last_checkpoint": latest_saved_step(model_dir),
        "model_dir": model_dir,
        "rows": [json.loads(line) for line in eval_log.read_text().splitlines()] if eval_log.is_file() else [],
    }


def until(fact, proc: subprocess.Popen, log, what: str) -> None:
    """Wait for `fact`; fail with the end of `log` if `proc` ends first."""
    wait_for(lambda: fact() or proc.poll() is not None, timeout=300, what=what)
    assert fact(), f"the process ended (code {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"


def assert_final_evaluation_landed(job: dict) -> None:
    assert job["chief_code"] == 0, job["chief"][-3000:]
    assert job["result"]["steps"] == job["last_checkpoint"] == STEPS
    assert [row["step"] for row in job["rows"]][-1:] == [STEPS], job["evaluator"][-3000:]
    assert job["rows"][-1]["checkpoint"] == str(job["model_dir"] / "checkpoints" / f"ckpt-{STEPS}")
    assert 0.5 < job["rows"][-1]["test_accuracy"] <= 1.0
    assert "did not confirm" not in job["chief"]


def test_evaluator_confirms_the_end_only_once_the_final_checkpoint_is_in_eval_jsonl(tmp_path):
    job = run_job_late_evaluator(tmp_path)
    assert_final_evaluation_landed(job)
    assert f"the chief is done at step {STEPS}: {FINAL_EVALUATION}" in job["evaluator"]


def test_sigterm_during_the_final_evaluation_lets_it_finish(tmp_path):
    """Deleting the job (or the chief giving up on the evaluator) sends SIGTERM; the evaluator
    finishes its final evaluation within the grace period, confirms it, and exits 0."""
    job = run_job_late_evaluator(tmp_path, sigterm_during_final_evaluation=True)
    assert_final_evaluation_landed(job)
    assert "SIGTERM: finishing the final evaluation first" in job["evaluator"]
    assert job["evaluator_code"] == 0  # it confirmed, and left by itself
