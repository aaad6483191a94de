"""Issue 25, defect 7: state files written beside their target and renamed over it are synced
first, and their folder after (pml_trainer.durable), so that a power loss leaves the old file or
the new one, not an empty one. Each test records which files and folders os.fsync was given."""

from __future__ import annotations

import os
import pathlib

import pytest

from deploy import jobs
from deploy.target import JobStatus
from pml_trainer import fingerprint
from pml_trainer.options import parse_args


@pytest.fixture
def synced(monkeypatch) -> list[pathlib.Path]:
    """What each os.fsync call synced, in order."""
    seen: list[pathlib.Path] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(pathlib.Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def assert_written_durably(synced: list[pathlib.Path], target: pathlib.Path) -> None:
    """The partial file of `target` was synced, then `target`'s folder (after the rename)."""
    assert len(synced) == 2, synced
    partial, folder = synced
    assert partial.parent == target.parent and partial.name.startswith(f".{target.name}.")
    assert folder == target.parent
    assert target.is_file() and not partial.exists()


def test_a_jobs_status_is_synced(pml_home, synced):
    folder = jobs.job_dir("demo")
    jobs.write(folder, JobStatus("demo", "local", "Running", "processes"))
    assert_written_durably(synced, folder / "job.json")
    assert jobs.read("demo").phase == "Running"


def test_run_json_is_synced(tmp_path, synced):
    fingerprint.write(parse_args(["--model-dir", str(tmp_path)]), tmp_path)
    assert_written_durably(synced, tmp_path / fingerprint.FILE)
