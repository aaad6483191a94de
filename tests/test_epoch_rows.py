"""SIGTERM in an epoch's last block (issue 12, item 4): the chief counts that epoch before it
leaves, so metrics.jsonl has every epoch exactly once after the restart.

Each epoch here is one block (--steps-per-execution above the steps of an epoch), so whenever
SIGTERM comes during training it comes in an epoch's last block: the chief is told once it has
printed its table's header, which it does just before the first block.
"""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from conftest import job_state, metrics, start_pmlctl, wait_for
from storage_servers import remote, server  # noqa: F401 (fixtures: every backend, Ceph in its tier)

from pml_trainer import epoch_report, exits

pytestmark = pytest.mark.slow
EPOCHS = 3
STEPS_PER_EPOCH = 18000 // 128  # 20000 examples less 10% for validation, in batches of 128
JOB = [
    "--workers",
    "0",
    "--ps",
    "0",
    "--epochs",
    str(EPOCHS),
    "--train-examples",
    "20000",
    "--batch-size",
    "128",
    "--steps-per-execution",
    "1000",
]


def preempt_in_an_epochs_last_block(model_dir: str, tmp_path, pml_home) -> str:
    """Run the job, SIGTERM its chief during training, let pmlctl restart it; the job's output."""
    job = start_pmlctl("submit", "--name", "rows", *JOB, "--model-dir", model_dir, cwd=tmp_path)
    log = pml_home / "jobs" / "rows" / "chief-0.log"
    wait_for(
        lambda: log.is_file() and epoch_report.header(("loss", "accuracy")) in log.read_text(),
        300,
        "the chief's first block",
        job,
    )
    chief = next(t for t in job_state(pml_home, "rows")["tasks"] if t["role"] == "chief")
    os.kill(chief["pid"], signal.SIGTERM)
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output[-3000:]
    assert "SIGTERM: checkpoint saved; exiting for a restart" in output
    assert f"chief-0 exited with code {exits.PREEMPTED}; restarting it" in output
    resumed = [int(s) for s in re.findall(r"resumed from checkpoint at step (\d+)", output)]
    # It left at an epoch's end, that epoch counted: the restart begins the next epoch.
    print(f"measured: SIGTERM in a last block, resumed at step {resumed}")
    assert len(resumed) == 1 and resumed[0] % STEPS_PER_EPOCH == 0 and 0 < resumed[0] <= EPOCHS * STEPS_PER_EPOCH
    return output


def assert_every_epoch_once(rows: list[dict]) -> None:
    assert [(r["epoch"], r["step"]) for r in rows] == [(e, e * STEPS_PER_EPOCH) for e in range(1, EPOCHS + 1)]


def test_sigterm_in_an_epochs_last_block_keeps_its_row(tmp_path, pml_home):
    model_dir = tmp_path / "model"
    output = preempt_in_an_epochs_last_block(str(model_dir), tmp_path, pml_home)
    assert_every_epoch_once(metrics(model_dir))
    assert len(re.findall(rf"chief-0 \|\s+\d+/{EPOCHS}\s", output)) == EPOCHS  # one table row per epoch too
    assert json.loads((model_dir / "result.json").read_text())["steps"] == EPOCHS * STEPS_PER_EPOCH


def test_sigterm_in_an_epochs_last_block_keeps_its_row_in_a_remote_model_dir(remote, tmp_path, pml_home):
    """Remotely, metrics.jsonl must be uploaded before the checkpoint the restart resumes from."""
    preempt_in_an_epochs_last_block(remote.uri(), tmp_path, pml_home)
    store = remote.store()
    assert_every_epoch_once([json.loads(line) for line in store.get_bytes("metrics.jsonl").decode().splitlines()])
    assert json.loads(store.get_bytes("result.json"))["steps"] == EPOCHS * STEPS_PER_EPOCH
