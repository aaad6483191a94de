"""A remote model dir's local staging (issue 28): it outlives a task that did not finish, for its
restart to publish what it staged, and nothing else. A finished job leaves none; staged work is
adopted only into the run it belongs to; --restart and time clear what no job can claim.

Against the tests' GCS server and moto's S3 (and Ceph RGW in the ceph tier).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from storage_servers import remote, server  # noqa: F401 (fixtures)
from test_fencing import stage, write

from pml_trainer import checkpoints, fingerprint, staging
from pml_trainer.model_dir import ModelDir
from pml_trainer.options import TrainOptions

FLAGS = ["--train-examples", "600", "--batch-size", "100", "--epochs", "2", "--hidden-layers", "1", "--neurons", "8"]


def trainer(remote, *flags: str) -> subprocess.CompletedProcess:
    """One process on its own (pmlctl submit --workers 0 --ps 0), staging under the test's folder."""
    return subprocess.run(
        [sys.executable, "-m", "pml_trainer", "--model-dir", remote.uri(), *FLAGS, *flags],
        cwd=ROOT,
        env={**os.environ, **remote.server.env()},
        capture_output=True,
        text=True,
        timeout=300,
    )


def empty_the_bucket(remote) -> None:
    store = remote.store("")
    for entry in store.list():
        store.delete(entry.name)


@pytest.mark.slow
def test_a_finished_run_leaves_no_staging_and_a_deleted_run_does_not_come_back(remote):
    first = trainer(remote)
    assert first.returncode == 0, first.stderr[-3000:]
    assert list(staging.root().iterdir()) == []  # no checkpoints, no SavedModel, no lock
    steps = checkpoints.step_of(checkpoints.published(remote.store())[-1])
    # The user deletes the model dir (or points at a new, empty server) and starts afresh.
    empty_the_bucket(remote)
    second = trainer(remote)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from checkpoint" not in second.stderr
    assert checkpoints.step_of(checkpoints.published(remote.store())[-1]) == steps  # trained both epochs again
    rows = remote.store().get_bytes("metrics.jsonl").decode().splitlines()
    assert [json.loads(row)["epoch"] for row in rows] == [1, 2]
    assert list(staging.root().iterdir()) == []


def killed_chief(remote, tmp_path) -> tuple[ModelDir, pathlib.Path]:
    """A chief that published its first checkpoint and run.json, staged a second one and died."""
    md = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert md.latest_checkpoint() is None
    opts = TrainOptions(model_dir=remote.uri())
    fingerprint.write(opts, md.path)
    md.publish_record(fingerprint.FILE, fingerprint.other_run(opts))
    md.publish_checkpoint(stage(md.path / "checkpoints", 10))
    md.close(60)
    stage(md.path / "checkpoints", 20, "unpublished")
    write(md.path / "metrics.jsonl", b'{"epoch": 1}\n')
    os.close(md._lock)  # the process ends
    return md, md.path


@pytest.mark.parametrize("left", ["nothing", "another run"])
def test_staged_checkpoints_are_not_adopted_into_a_model_dir_that_no_longer_shows_their_run(
    remote, tmp_path, left, capfd
):
    """The bucket emptied under a chief that died with a staged checkpoint: today its restart
    published the old run into the empty bucket, and resumed from it."""
    _, folder = killed_chief(remote, tmp_path)
    empty_the_bucket(remote)
    if left == "another run":  # its record, and no checkpoint yet
        remote.store().put_bytes(
            fingerprint.document(TrainOptions(model_dir=remote.uri(), seed=9)).encode(), "run.json"
        )
    restarted = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert restarted.path == folder
    assert restarted.latest_checkpoint() is None
    assert (
        f"not resuming from ckpt-20, staged in {folder}: the model dir does not show the run" in capfd.readouterr().err
    )
    assert not list((folder / "checkpoints").glob("ckpt-*")) and not (folder / "metrics.jsonl").exists()
    restarted.close(60)
    assert checkpoints.published(remote.store()) == []
    os.close(restarted._lock)


def test_a_chief_killed_before_its_first_pointer_still_republishes_on_restart(remote, tmp_path):
    """The run's record is up, its first checkpoint's pointer never was: that is still this run."""
    md = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert md.latest_checkpoint() is None
    opts = TrainOptions(model_dir=remote.uri())
    fingerprint.write(opts, md.path)
    md.publish_record(fingerprint.FILE, fingerprint.other_run(opts))
    md.close(60)
    stage(md.path / "checkpoints", 10, "unpublished")
    os.close(md._lock)
    restarted = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert restarted.latest_checkpoint() == str(restarted.path / "checkpoints" / "ckpt-10")
    restarted.close(60)
    assert checkpoints.published(remote.store()) == [f"ckpt-{restarted.writer.incarnation}-10"]
    restarted.done()
    assert list(staging.root().iterdir()) == []


def test_restart_clears_the_model_dir_s_staging_on_this_machine(remote, tmp_path):
    _, folder = killed_chief(remote, tmp_path)
    other = staging.folder(remote.uri("elsewhere"), "chief-0")
    other.mkdir(parents=True)
    opts = TrainOptions(model_dir=remote.uri(), seed=5, restart=True)  # another run: the old one is discarded
    assert "discarded the run" in fingerprint.admit(opts, may_discard=True)
    assert not folder.exists() and other.is_dir()
    restarted = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert restarted.latest_checkpoint() is None
    os.close(restarted._lock)


def test_staging_no_task_has_used_for_a_week_is_removed_at_the_next_start(remote, tmp_path, capfd):
    old = staging.folder("s3://gone/run", "chief-0")
    write(old / "checkpoints" / "ckpt-5.index", b"old")
    held = staging.folder("s3://busy/run", "worker-0")
    _, lock = staging.take(held, "00000001")  # a live task
    write(held / "checkpoints" / "ckpt-5.index", b"held")
    recent = staging.folder("s3://recent/run", "chief-0")
    write(recent / "checkpoints" / "ckpt-5.index", b"recent")
    week = time.time() - (staging.STALE_DAYS + 1) * 86400
    for folder in (old, held):
        for p in [folder, *folder.rglob("*"), folder.with_name(folder.name + ".lock")]:
            if p.exists():
                os.utime(p, (week, week))
    md = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert not old.exists() and held.is_dir() and recent.is_dir()
    assert f"removed 1 staging folder(s) in {staging.root()} that no task has used for 7 days" in capfd.readouterr().err
    os.close(lock)
    os.close(md._lock)


def test_a_restart_that_saved_nothing_does_not_publish_the_checkpoint_it_downloaded(remote, tmp_path):
    """A chief that resumed (downloading the latest checkpoint) and died before saving one: its
    restart took the downloaded copy for staged work and published it again under its own name."""
    first = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert first.latest_checkpoint() is None
    first.publish_checkpoint(stage(first.path / "checkpoints", 10))
    first.close(60)
    os.close(first._lock)
    for _ in range(2):  # resumed, and died before its first checkpoint
        again = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
        assert again.latest_checkpoint().endswith(f"ckpt-{first.writer.incarnation}-10")
        again.close(60)
        os.close(again._lock)
    assert checkpoints.published(remote.store()) == [f"ckpt-{first.writer.incarnation}-10"]
