"""Issue 12, items 1-3, with real trainer processes against each storage backend (the GCS
emulator, moto's S3, and Ceph RGW in the ceph tier): two chiefs racing on one model dir, a pointer
to missing files, 503 SlowDown replies at resume.

After each, the model dir holds a pointer whose checkpoints are all complete (and no other
checkpoint files), metrics.jsonl has every epoch exactly once, and the resumed step is never lower
than the newest complete checkpoint the pointer listed.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import ROOT, pml_home, pmlctl, start_pmlctl, wait_for  # noqa: F401 (pml_home: a fixture)
from storage_servers import FaultProxy, remote, server  # noqa: F401 (fixtures)

from pml_trainer import checkpoints, exits, faults

pytestmark = pytest.mark.slow
# 1800 training examples in steps of 100: 18 steps per epoch; a checkpoint every 5 steps and at
# each epoch's end (5, 10, 15, 18, 20, ...), the last 3 kept.
STEPS_PER_EPOCH = 18
FLAGS = [
    "--train-examples",
    "2000",
    "--batch-size",
    "100",
    "--checkpoint-every-steps",
    "5",
    "--keep-checkpoints",
    "3",
    "--hidden-layers",
    "1",
    "--neurons",
    "16",
]


def start(
    remote, tmp_path: pathlib.Path, name: str, epochs: int, env: dict | None = None, hook: str | None = None
) -> tuple[subprocess.Popen, pathlib.Path]:
    """A chief (a trainer process on its own), with its own staging folder: another pod."""
    log = tmp_path / f"{name}.log"
    task_env = {**os.environ, **(env or remote.server.env()), "PML_STAGING_DIR": str(tmp_path / f"staging-{name}")}
    task_env.pop(faults.PAUSE_BEFORE_PUBLISH, None)
    if hook:
        task_env[faults.PAUSE_BEFORE_PUBLISH] = hook
    proc = subprocess.Popen(
        [sys.executable, "-m", "pml_trainer", "--model-dir", remote.uri(), "--epochs", str(epochs), *FLAGS],
        cwd=ROOT,
        env=task_env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    return proc, log


def finish(proc: subprocess.Popen, log: pathlib.Path, timeout: float = 300) -> str:
    proc.wait(timeout)
    return log.read_text()


def train(remote, tmp_path, name, epochs, **kwargs) -> tuple[int, str]:
    proc, log = start(remote, tmp_path, name, epochs, **kwargs)
    return proc.wait(300), log.read_text()


def resumed_at(output: str) -> list[int]:
    return [int(s) for s in re.findall(r"resumed from checkpoint at step (\d+)", output)]


def assert_consistent(store, epochs: int) -> list[str]:
    """Every listed checkpoint is complete, no other checkpoint file is there, the last one is the
    run's last step, and metrics.jsonl has each epoch once."""
    names = checkpoints.published(store)
    files = sorted(e.name for e in store.list("checkpoints") if checkpoints.checkpoint_of(e.name))
    for name in names:
        assert checkpoints.missing_files(files, name) == [], (name, files)
    assert {checkpoints.checkpoint_of(f) for f in files} == set(names), files
    assert checkpoints.step_of(names[-1]) == epochs * STEPS_PER_EPOCH
    rows = [json.loads(line) for line in store.get_bytes("metrics.jsonl").decode().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert json.loads(store.get_bytes("result.json"))["steps"] == epochs * STEPS_PER_EPOCH
    return names


@pytest.mark.parametrize("when", ["before", "after"])
def test_two_chiefs_racing_on_one_model_dir(remote, tmp_path, when):
    """The old chief (still terminating) has uploaded step 20's files and is about to write the
    pointer when the new chief starts. It writes either while the new one's first checkpoint is
    uploaded but not yet published ("before"), or after the new one has published ("after").
    Today it wrote its pointer over the new one's and deleted files the other's pointer named."""
    store = remote.store()
    old, old_log = start(remote, tmp_path, "old", 3, hook=f"20:{tmp_path / 'old-paused'}:{tmp_path / 'old-go'}")
    new = None
    try:
        wait_for((tmp_path / "old-paused").is_file, 300, "the old chief to pause before publishing step 20", old)
        # The uploader lags behind training and skips superseded checkpoints: which were published
        # depends on timing, the newest of them is where the new chief must resume.
        newest = checkpoints.step_of(checkpoints.published(store)[-1])
        assert newest < int((tmp_path / "old-paused").read_text())
        if when == "before":
            new, new_log = start(
                remote, tmp_path, "new", 3, hook=f"{newest + 1}:{tmp_path / 'new-paused'}:{tmp_path / 'new-go'}"
            )
            wait_for((tmp_path / "new-paused").is_file, 300, "the new chief's first checkpoint to be uploaded", new)
        else:
            new, new_log = start(remote, tmp_path, "new", 3)
            wait_for(
                lambda: checkpoints.step_of(checkpoints.published(store)[-1]) > newest,
                300,
                "the new chief to publish",
                new,
            )
        before = store.get_bytes("checkpoints/checkpoint")
        (tmp_path / "old-go").touch()
        old_output = finish(old, old_log)
        # Nothing the old chief did after the new one started shows in the pointer.
        if when == "before":  # the new chief is paused: the pointer is still its claim
            assert store.get_bytes("checkpoints/checkpoint") == before
        else:  # never back to an older step, never naming files that are gone
            latest = checkpoints.published(store)[-1]
            assert checkpoints.step_of(latest) >= checkpoints.step_of(checkpoints.names_in_pointer(before.decode())[-1])
            assert checkpoints.missing_files([e.name for e in store.list("checkpoints")], latest) == []
        (tmp_path / "new-go").touch()
        output = finish(new, new_log)
    finally:
        for proc in (old, new):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert new.returncode == 0, output[-3000:]
    assert resumed_at(output) == [newest]  # the newest complete checkpoint the pointer listed
    names = assert_consistent(store, 3)
    assert len({checkpoints.incarnation_of(n) for n in names}) == 1  # all the new chief's
    # The old chief stopped at its next write, for a reason it gave, with a code TFJob retries.
    assert old.returncode == exits.FENCED and exits.is_retryable(old.returncode), old_output[-3000:]
    assert re.search(
        r"ERROR chief-0 another chief took over .*checkpoint was rewritten by chief [0-9a-f]{8} .*This chief "
        r"\([0-9a-f]{8}\) stops without writing there again",
        old_output,
    ), old_output[-3000:]


def test_a_pointer_to_missing_files_resumes_from_the_newest_complete_checkpoint(remote, tmp_path):
    """Today's code restarted from step 0, silently, and dropped the earlier epochs' rows."""
    store = remote.store()
    code, output = train(remote, tmp_path, "first", 2)
    assert code == 0, output[-3000:]
    names = checkpoints.published(store)
    assert checkpoints.step_of(names[-1]) == 36 and len(names) == 3
    store.delete(f"checkpoints/{names[-1]}.index")

    code, output = train(remote, tmp_path, "second", 3)
    assert code == 0, output[-3000:]
    assert resumed_at(output) == [checkpoints.step_of(names[-2])]
    assert (
        f"WARNING chief-0 checkpoint {names[-1]}, listed in {store.location}/checkpoints/checkpoint, lacks {names[-1]}.index"
        in output
    )
    names = assert_consistent(store, 3)

    # None complete: a retryable failure, not a fresh start, and the pointer as it was.
    pointer = store.get_bytes("checkpoints/checkpoint")
    for name in names:
        store.delete(f"checkpoints/{name}.index")
    code, output = train(remote, tmp_path, "third", 4)
    assert code == exits.STORAGE_UNAVAILABLE and exits.is_retryable(code), output[-3000:]
    assert "but none of them has all its files; not starting over from step 0" in output
    assert store.get_bytes("checkpoints/checkpoint") == pointer
    assert [json.loads(line)["epoch"] for line in store.get_bytes("metrics.jsonl").decode().splitlines()] == [1, 2, 3]


def test_slowdowns_at_resume_are_waited_out_and_an_outage_is_retryable(remote, tmp_path):
    """Three 503 SlowDown replies to checkpoint reads gave exit 3, which TFJob takes as permanent."""
    store = remote.store()
    code, output = train(remote, tmp_path, "first", 2)
    assert code == 0, output[-3000:]
    proxy = FaultProxy(remote.server)
    try:
        # Three replies: waited out.
        fault = proxy.fail("GET", "checkpoints/", times=3)
        code, output = train(remote, tmp_path, "slowdown", 3, env=proxy.env())
        assert code == 0, output[-3000:]
        assert fault.hits == 3
        assert re.search(r"WARNING chief-0 cannot read from .*503.*; trying again in \d+s", output)
        assert resumed_at(output) == [36]
        assert_consistent(store, 3)
        # Longer than reads wait (20 s): a retryable exit, and nothing written.
        pointer = store.get_bytes("checkpoints/checkpoint")
        proxy.fail("GET", "checkpoints/")
        code, output = train(remote, tmp_path, "outage", 4, env=proxy.env())
        assert code == exits.STORAGE_UNAVAILABLE and exits.is_retryable(code), output[-3000:]
        assert re.search(r"cannot read from .* for 20s; exiting for a restart", output), output[-3000:]
        assert store.get_bytes("checkpoints/checkpoint") == pointer
    finally:
        proxy.close()


def test_mirrored_workers_restore_the_checkpoint_the_chief_claims(remote, tmp_path, pml_home, monkeypatch):
    """A worker read the pointer before the chief claimed the model dir, and an old chief published
    its last checkpoint in between: the worker restored an older step than the chief, and the two
    replicas trained on from different weights and step counts (measured: the job then hung)."""
    monkeypatch.setenv("PML_STAGING_DIR", str(tmp_path / "staging"))
    shape = ["--workers", "1", "--ps", "0", "--model-dir", remote.uri(), *FLAGS]
    first = pmlctl("submit", "--name", "first", "--epochs", "1", *shape, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    store = remote.store()
    names = checkpoints.published(store)  # ..., 15, 18: two checkpoints of different weights
    assert [checkpoints.step_of(n) for n in names[-2:]] == [15, 18]
    older = checkpoints.pointer_text(names[:-1], "0000000a on old-pod, pid 1, write 1, then").encode()
    store.put_bytes(older, checkpoints.POINTER_KEY)  # the old chief has not yet published step 18
    marker, go = tmp_path / "claiming", tmp_path / "go"
    monkeypatch.setenv(faults.PAUSE_BEFORE_CLAIM, f"{marker}:{go}")
    job = start_pmlctl("submit", "--name", "second", "--epochs", "2", *shape, cwd=tmp_path)
    try:
        wait_for(marker.is_file, timeout=300, what="the chief to stop before its claim", proc=job)
        fetched = tmp_path / "staging"
        wait_for(lambda: list(fetched.glob("*-worker-0/checkpoints/ckpt-*-15.index")), 300, "the worker's restore", job)
        newer = checkpoints.pointer_text(names, "0000000a on old-pod, pid 1, write 2, then").encode()
        store.put_bytes(newer, checkpoints.POINTER_KEY)  # now it has
        go.touch()
        output, _ = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == 0, output[-4000:]
    assert re.findall(r"(chief-0|worker-0) resumed from checkpoint at step (\d+)", output) in (
        [("chief-0", "18"), ("worker-0", "18")],
        [("worker-0", "18"), ("chief-0", "18")],
    ), output[-4000:]
    assert "worker-0 restored step 15, which the chief did not" in output, output[-4000:]
