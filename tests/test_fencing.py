"""Two writers on one model dir, and storage that fails, at the storage layer (issue 12).

Each test runs against every backend: the GCS emulator (with GCS's preconditions), moto's S3 and
(in the ceph tier) Ceph RGW. The same stories with real trainer processes are in test_two_writers.py.
"""

from __future__ import annotations

import os
import pathlib
import re
import threading

import pytest
from conftest import logged_by, pmlctl, wait_for
from storage_servers import FaultProxy, in_front, remote, server  # noqa: F401 (fixtures)

from pml_trainer import checkpoints, data_cache, durable, epoch_report, faults, model_dir, storage
from pml_trainer import uploader as uploader_module
from pml_trainer.checkpoints import Fenced, Writer
from pml_trainer.model_dir import ModelDir
from pml_trainer.uploader import Uploader


@pytest.fixture(autouse=True)
def _no_uploader_outlives_its_test(monkeypatch):
    """An uploader left retrying a stopped server would print into later tests' output."""
    made = []
    init = Uploader.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Uploader, "__init__", record)
    yield
    for uploader in made:
        uploader.stopped = uploader.stopped or RuntimeError("its test ended")


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def stage(folder: pathlib.Path, step: int, content: str = "") -> str:
    """A checkpoint as TensorFlow's manager leaves it in a staging folder, with its local pointer."""
    write(folder / f"ckpt-{step}.data-00000-of-00001", f"data {step} {content}".encode())
    write(folder / f"ckpt-{step}.index", f"index {step} {content}".encode())
    pointer = folder / checkpoints.POINTER
    names = checkpoints.names_in_pointer(pointer.read_text()) if pointer.is_file() else []
    pointer.write_text(checkpoints.pointer_text([*names, f"ckpt-{step}"]))
    return f"ckpt-{step}"


def checkpoint_files(store) -> set[str]:
    return {e.name.rpartition("/")[2] for e in store.list("checkpoints") if checkpoints.checkpoint_of(e.name)}


def assert_consistent(store) -> list[str]:
    """Every checkpoint the pointer lists has all its files, and no other checkpoint file is left."""
    names = checkpoints.published(store)
    files = checkpoint_files(store)
    for name in names:
        assert checkpoints.missing_files(sorted(files), name) == [], name
    assert {checkpoints.checkpoint_of(f) for f in files} == set(names)
    return names


# --- 1. two writers ----------------------------------------------------------------------------


def test_a_new_writer_fences_the_old_one_whatever_the_interleaving(remote, tmp_path, monkeypatch):
    """The old chief had uploaded a checkpoint's files and was about to write the pointer when the
    new chief started, claimed the model dir, and published. Today's code let the old one write its
    pointer and delete the new one's files; here it stops, and the new one's pointer stays whole."""
    store = remote.store()
    old, new = Writer(store, "0000000a", 2), Writer(store, "0000000b", 2)
    for step in (10, 20):
        old.publish(tmp_path / "old", stage(tmp_path / "old", step, "old"))

    def new_chief_starts_and_publishes(step):
        if new.claimed:
            return
        resumed = new.claim(tmp_path / "new")  # restores the old chief's latest
        assert resumed.name == "ckpt-0000000a-20"
        assert (resumed.parent / "ckpt-0000000a-20.index").read_bytes() == b"index 20 old"
        new.publish(tmp_path / "new", stage(tmp_path / "new", 30, "new"))

    monkeypatch.setattr(faults, "pause_before_publish", new_chief_starts_and_publishes)
    with pytest.raises(
        Fenced,
        match=r"another chief took over .*rewritten by chief 0000000b .* names ckpt-0000000b-30 "
        r"\(step 30\)\. This chief \(0000000a\) stops",
    ):
        old.publish(tmp_path / "old", stage(tmp_path / "old", 30, "old"))
    monkeypatch.undo()
    # The names never mix: the new one's step 30 is its own. The old one's upload was pruned as a
    # fenced writer's leftover (the pointer was still the new one's write after listing).
    assert store.get_bytes("checkpoints/ckpt-0000000b-30.index") == b"index 30 new"
    assert "ckpt-0000000a-30.index" not in checkpoint_files(store)
    assert assert_consistent(store) == ["ckpt-0000000a-20", "ckpt-0000000b-30"]
    # A fenced writer stays fenced: it uploads nothing more.
    with pytest.raises(Fenced):
        old.publish(tmp_path / "old", stage(tmp_path / "old", 40, "old"))
    assert "ckpt-0000000a-40.index" not in checkpoint_files(store)
    # The new one's next publish drops the old chief's checkpoint and its leftovers.
    new.publish(tmp_path / "new", stage(tmp_path / "new", 40, "new"))
    assert assert_consistent(store) == ["ckpt-0000000b-30", "ckpt-0000000b-40"]
    restored = checkpoints.fetch_latest(store, tmp_path / "reader")
    assert (restored.parent / f"{restored.name}.index").read_bytes() == b"index 40 new"


def test_an_old_writer_that_publishes_after_the_new_one_stops_and_changes_nothing(remote, tmp_path):
    """Today's code let it write the pointer back to its own, older list and prune the newer checkpoint."""
    store = remote.store()
    old, new = Writer(store, "0000000a", 3), Writer(store, "0000000b", 3)
    old.publish(tmp_path / "old", stage(tmp_path / "old", 10))
    assert new.claim(tmp_path / "new").name == "ckpt-0000000a-10"
    new.publish(tmp_path / "new", stage(tmp_path / "new", 20))
    new.publish(tmp_path / "new", stage(tmp_path / "new", 30))
    before = store.get_bytes("checkpoints/checkpoint")
    with pytest.raises(Fenced):
        old.publish(tmp_path / "old", stage(tmp_path / "old", 40))
    assert store.get_bytes("checkpoints/checkpoint") == before
    assert assert_consistent(store) == ["ckpt-0000000a-10", "ckpt-0000000b-20", "ckpt-0000000b-30"]


def test_conditional_writes_as_each_service_does_them(remote, tmp_path):
    """Every server the tests run refuses writes whose precondition fails: moto, Ceph RGW, and the GCS
    emulator with GCS's rules (gcs_with_preconditions.py; the bare emulator takes them: test_preconditions.py)."""
    store = remote.store()
    assert store.put_if(b"one", "p", None)
    assert store.put_if(b"two", "p", None) is False  # create-only over an object
    data, version = store.get_versioned("p")
    assert data == b"one" and version
    assert store.put_if(b"three", "p", version)
    assert store.put_if(b"four", "p", version) is False  # at a stale version
    assert store.get_bytes("p") == b"three"


def test_a_swap_lost_to_a_racing_writer_is_refused(remote, tmp_path, monkeypatch):
    """The race inside one compare-and-swap: the other writer's claim lands between our read and
    our write, and the precondition refuses our write. (A service that ignored it would take it, and
    the read-back would find the other writer's claim gone: the wrong one would go on.)"""
    store = remote.store()
    old, new = Writer(store, "0000000a", 3), Writer(store, "0000000b", 3)
    old.publish(tmp_path / "old", stage(tmp_path / "old", 10))
    real_put_if = store.put_if

    def claim_first(data, name, version):
        monkeypatch.setattr(store, "put_if", real_put_if)
        new.claim(tmp_path / "new")
        return real_put_if(data, name, version)

    monkeypatch.setattr(store, "put_if", claim_first)
    stopped = []
    for writer, step in ((old, 20), (new, 20)):
        try:
            writer.publish(tmp_path / writer.incarnation, stage(tmp_path / writer.incarnation, step))
        except Fenced:
            stopped.append(writer.incarnation)
    assert stopped == ["0000000a"]  # the precondition refused the old one's write; the new one goes on
    assert_consistent(store)


def test_a_chief_that_starts_afresh_lists_only_its_own_checkpoints(remote, tmp_path):
    """A chief that does not resume (--restart discarded the run, and another chief's pointer
    appeared meanwhile) claims at its first publish; the later steps listed are another run's."""
    store = remote.store()
    Writer(store, "0000000a", 3).publish(tmp_path / "a", stage(tmp_path / "a", 500))
    fresh = Writer(store, "0000000b", 3)
    assert fresh.publish(tmp_path / "b", stage(tmp_path / "b", 10)) == ["ckpt-0000000b-10"]
    assert assert_consistent(store) == ["ckpt-0000000b-10"]


def test_a_superseded_chief_uploads_nothing_more(remote, tmp_path):
    store = remote.store()
    old = Writer(store, "0000000a", 3)
    staging = tmp_path / "staging"
    old.publish(staging / "checkpoints", stage(staging / "checkpoints", 10))
    store.put_bytes(b'{"epoch": 1, "by": "new"}\n', "metrics.jsonl")
    Writer(store, "0000000b", 3).claim(tmp_path / "new")
    up = Uploader(store, staging, 3, old)
    write(staging / "metrics.jsonl", b'{"epoch": 1, "by": "old"}\n')
    up.file("metrics.jsonl")
    assert up.wait(30)
    assert isinstance(up.stopped, Fenced)
    assert store.get_bytes("metrics.jsonl") == b'{"epoch": 1, "by": "new"}\n'


# --- 2. a pointer to missing files ---------------------------------------------------------------


def test_a_pointer_to_missing_files_resumes_from_the_newest_complete_one(remote, tmp_path, capfd):
    store = remote.store()
    writer = Writer(store, "0000000a", 3)
    for step in (10, 20, 30):
        writer.publish(tmp_path / "w", stage(tmp_path / "w", step))
    store.delete("checkpoints/ckpt-0000000a-30.index")
    store.delete("checkpoints/ckpt-0000000a-20.data-00000-of-00001")
    assert checkpoints.fetch_latest(store, tmp_path / "r").name == "ckpt-0000000a-10"
    err = capfd.readouterr().err
    assert "checkpoint ckpt-0000000a-30, listed in" in err and "lacks ckpt-0000000a-30.index" in err
    assert "lacks ckpt-0000000a-20.data-*" in err
    # A new chief resumes from it too, and claims the model dir.
    assert Writer(store, "0000000b", 3).claim(tmp_path / "n").name == "ckpt-0000000a-10"

    store.delete("checkpoints/ckpt-0000000a-10.index")
    pointer = store.get_bytes("checkpoints/checkpoint")
    for read in (
        lambda: checkpoints.fetch_latest(store, tmp_path / "r2"),
        lambda: Writer(store, "0000000c", 3).claim(tmp_path / "c"),
    ):
        with pytest.raises(
            checkpoints.CheckpointsMissing,
            match=r"lists ckpt-0000000a-10, ckpt-0000000a-20, "
            r"ckpt-0000000a-30, but none of them has all its files; not starting over from step 0",
        ):
            read()
    assert isinstance(checkpoints.CheckpointsMissing("x"), storage.StorageUnavailable)  # retryable
    assert store.get_bytes("checkpoints/checkpoint") == pointer  # nothing claimed


# --- 3. brief storage errors at resume -------------------------------------------------------------


@pytest.fixture
def proxy(remote, monkeypatch):
    """The server behind a FaultProxy; stores opened after this go through it."""
    with in_front(FaultProxy(remote.server), monkeypatch) as fronted:
        yield fronted


def test_reads_wait_out_slowdowns(remote, proxy, tmp_path, capfd):
    """Three 503 SlowDown replies to checkpoint reads: today's code failed the resume for good."""
    store = remote.store()
    Writer(store, "0000000a", 3).publish(tmp_path / "w", stage(tmp_path / "w", 10))
    fault = proxy.fail("GET", "checkpoints/", times=3)
    assert checkpoints.fetch_latest(store, tmp_path / "r").name == "ckpt-0000000a-10"
    assert fault.hits == 3
    assert re.search(
        r"WARNING test-0 cannot read from .*\((503 SlowDown|503 replies, each time it was asked)\); trying again",
        capfd.readouterr().err,
    )
    # Datasets too.
    write(tmp_path / "d.npz", b"not really an npz")
    store.put_file(tmp_path / "d.npz", "data/d.npz")
    proxy.fail("GET", "d.npz", times=3)
    os.environ["PML_DATA_CACHE"] = str(tmp_path / "cache")
    try:
        assert data_cache.local_file(remote.uri("model/data/d.npz"), None).read_bytes() == b"not really an npz"
    finally:
        del os.environ["PML_DATA_CACHE"]


def test_an_outage_longer_than_reads_wait_is_unavailable_not_wrong(remote, proxy, tmp_path):
    store = remote.store()
    store.patience = 2.0
    proxy.fail("GET", "checkpoints/")
    with pytest.raises(storage.StorageUnavailable, match=r"\(SlowDown\)|\(503|, for 2s$"):
        checkpoints.fetch_latest(store, tmp_path / "r")


# --- 6. saved work ---------------------------------------------------------------------------------


def test_permanent_errors_stop_the_uploads_at_once(remote, proxy, tmp_path):
    """AccessDenied on writes: today's uploader retried it for ever while training went on."""
    md = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert md.latest_checkpoint() is None
    proxy.fail("PUT", "model/", status=403, code="AccessDenied")
    proxy.fail("POST", "^/upload/", status=403, code="AccessDenied")  # GCS uploads (the name is in the body)
    stage(md.path / "checkpoints", 10)
    md.publish_checkpoint("ckpt-10")
    assert md.uploader.wait(60)  # it stopped rather than retry
    assert isinstance(md.uploader.stopped, storage.StorageError)
    assert not isinstance(md.uploader.stopped, storage.StorageUnavailable)
    assert "access denied" in str(md.uploader.stopped)
    with pytest.raises(storage.StorageError, match="access denied"):
        md.publish("metrics.jsonl")


def test_training_pauses_while_storage_fails_and_unpublished_work_piles_up(remote, tmp_path, monkeypatch):
    said = logged_by(model_dir, monkeypatch)
    interrupted = [False]
    md = ModelDir(remote.uri(), None, "chief-0", 3, writer=True, interrupted=lambda: interrupted[0])
    assert md.latest_checkpoint() is None
    folder = md.path / "checkpoints"
    remote.server.stop()
    md.publish_checkpoint(stage(folder, 10))
    wait_for(lambda: md.uploader.failing_since is not None, 60, "the uploader to find storage failing")
    saver = threading.Thread(target=md.publish_checkpoint, args=(stage(folder, 20),))
    saver.start()
    wait_for(lambda: any(s.startswith("pausing training") for s in said), 30, "training to pause")
    assert saver.is_alive()
    assert "2 checkpoints wait to be published (ckpt-10, ckpt-20)" in said[-1]
    remote.server.start()
    saver.join(120)
    assert not saver.is_alive()
    assert said[-1].startswith("training resumes after a pause of")
    md.close(60)
    assert [checkpoints.step_of(n) for n in checkpoints.published(remote.store())] == [10, 20]

    # SIGTERM ends a pause: the chief saves and leaves within its grace period.
    remote.server.stop()
    md.publish_checkpoint(stage(folder, 30))
    wait_for(lambda: md.uploader.failing_since is not None, 60, "the uploader to find storage failing")
    saver = threading.Thread(target=md.publish_checkpoint, args=(stage(folder, 40),))
    saver.start()
    wait_for(lambda: said[-1].startswith("pausing training"), 30, "training to pause")
    interrupted[0] = True
    saver.join(30)
    assert not saver.is_alive()
    assert said[-1].startswith("SIGTERM during the pause")
    remote.server.start()


def test_a_restarted_chief_publishes_the_checkpoints_its_predecessor_staged(remote, tmp_path):
    """Storage failed (or SIGTERM left 20 s) and the chief's container restarted in the same pod:
    its staging folder holds newer checkpoints than the pointer. Today's code deleted them."""
    store = remote.store()
    first = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert first.latest_checkpoint() is None
    folder = first.path / "checkpoints"
    first.publish_checkpoint(stage(folder, 10))
    first.close(60)
    write(first.path / "metrics.jsonl", b'{"epoch": 1}\n')
    first.publish("metrics.jsonl")
    first.close(60)
    stage(folder, 20, "unpublished")  # saved, never uploaded
    write(first.path / "metrics.jsonl", b'{"epoch": 1}\n{"epoch": 2}\n')
    os.close(first._lock)  # the process ends

    second = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert second.path == first.path
    latest = second.latest_checkpoint()
    assert latest == str(folder / "ckpt-20")
    second.fetch("metrics.jsonl")
    assert (second.path / "metrics.jsonl").read_bytes() == b'{"epoch": 1}\n{"epoch": 2}\n'
    second.close(60)
    assert checkpoints.published(store)[-1] == f"ckpt-{second.writer.incarnation}-20"
    assert store.get_bytes(f"checkpoints/ckpt-{second.writer.incarnation}-20.index") == b"index 20 unpublished"
    os.close(second._lock)

    # Not so when another chief took over in between: the staged work lost the race.
    stage(folder, 30, "lost")
    Writer(store, "0000000c", 3).claim(tmp_path / "other")
    third = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert third.latest_checkpoint().endswith(f"ckpt-{second.writer.incarnation}-20")
    assert not (folder / "ckpt-30.index").exists() and not (third.path / "metrics.jsonl").exists()
    os.close(third._lock)


def test_a_chief_killed_mid_save_resumes_past_the_folder_the_save_left(remote, tmp_path):
    """SIGKILL while TensorFlow writes a checkpoint leaves `<name>_temp/`, where a sharded save
    writes before it merges (functional_saver.py). The restarted chief crashed on it with
    IsADirectoryError and the job failed; it now resumes from what it staged and removes it."""
    first = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert first.latest_checkpoint() is None
    folder = first.path / "checkpoints"
    first.publish_checkpoint(stage(folder, 10))
    first.close(60)
    stage(folder, 20, "unpublished")

    def kill_mid_save(step: int) -> pathlib.Path:
        left = folder / f"ckpt-{step}_temp"
        write(left / "part-00000-of-00001.data-00000-of-00001", b"half a shard")
        return left

    left = kill_mid_save(30)
    os.close(first._lock)

    second = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert second.latest_checkpoint() == str(folder / "ckpt-20")  # staged, so adopted
    assert not left.exists()
    second.close(60)
    os.close(second._lock)

    # The same when the staged work lost the race to another chief and goes.
    left = kill_mid_save(40)
    Writer(remote.store(), "0000000c", 3).claim(tmp_path / "other")
    third = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert third.latest_checkpoint().endswith(f"ckpt-{second.writer.incarnation}-20")
    assert not left.exists()
    os.close(third._lock)


def test_two_chiefs_on_one_machine_do_not_share_a_staging_folder(remote):
    first = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    second = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert second.path != first.path and first.path.is_dir()
    os.close(first._lock)
    os.close(second._lock)


# --- 8. leftovers, pruning, local writes ---------------------------------------------------------


# Not GCS: an interrupted resumable upload session expires after a week
# (cloud.google.com/storage/docs/resumable-uploads); there is nothing to abort.
@pytest.mark.parametrize("server", ["s3", pytest.param("ceph", marks=pytest.mark.ceph)], indirect=True)
def test_a_new_writer_aborts_multipart_uploads_a_killed_one_left(remote, tmp_path):
    client, key = remote.server.client(), "model/checkpoints/ckpt-0000000a-10.data-00000-of-00001"
    upload = client._create_multipart_upload(remote.bucket, key, {})
    client._upload_part(remote.bucket, key, os.urandom(5 * 1024 * 1024), None, upload, 1)
    assert [u.upload_id for u in client._list_multipart_uploads(remote.bucket).uploads] == [upload]
    Writer(remote.store(), "0000000b", 3).claim(tmp_path / "n")
    assert client._list_multipart_uploads(remote.bucket).uploads == []


def test_a_failed_delete_while_pruning_does_not_upload_the_checkpoint_again(remote, tmp_path, monkeypatch, capfd):
    store = remote.store()
    puts: list[str] = []
    real_put_file, real_delete_if = store.put_file, store.delete_if
    monkeypatch.setattr(store, "put_file", lambda source, name: (puts.append(name), real_put_file(source, name)))
    failures = [1]

    def delete_if(name, version):
        if failures[0]:
            failures[0] -= 1
            raise storage.StorageUnavailable("cannot delete from there (SlowDown)")
        return real_delete_if(name, version)

    monkeypatch.setattr(store, "delete_if", delete_if)
    monkeypatch.setattr(store, "delete", lambda name: delete_if(name, ""))
    monkeypatch.setattr(store, "enforces_preconditions", lambda: None)  # its scratch file is not pruning
    monkeypatch.setattr(uploader_module, "FIRST_RETRY", 0.1)
    staging = tmp_path / "staging"
    up = Uploader(store, staging, 1, Writer(store, "0000000a", 1))
    for step in (10, 20, 30):
        up.checkpoint(stage(staging / "checkpoints", step))
        assert up.wait(30)
    assert sorted(puts) == sorted(
        f"checkpoints/ckpt-0000000a-{s}.{ext}" for s in (10, 20, 30) for ext in ("index", "data-00000-of-00001")
    )
    assert "pruning old checkpoints failed" in capfd.readouterr().err
    assert assert_consistent(store) == ["ckpt-0000000a-30"]


def test_local_writes_reach_the_disk_before_their_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    store = storage.open_store(str(tmp_path / "dir"))
    store.put_bytes(b"x", "a/file")
    target = str(tmp_path / "dir" / "a" / "file")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(tmp_path / "dir" / "a" / ".file."))  # the partial file's data
    assert events[1][1] == target and events[2][1] == str(tmp_path / "dir" / "a")  # then the folder
    # metrics.jsonl and result.json of a local model dir, too.
    events.clear()
    epoch_report.MetricsLog(tmp_path / "m" / "metrics.jsonl", resume_epoch=0).append({"epoch": 1})
    durable.write_json(tmp_path / "m" / "result.json", {"steps": 1})
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"] * 2
    assert [path for kind, path in events if kind == "replace"] == [
        str(tmp_path / "m" / "metrics.jsonl"),
        str(tmp_path / "m" / "result.json"),
    ]


def test_pmlctl_says_the_storage_code_s_warnings_as_its_own_lines(remote, proxy, tmp_path):
    """pmlctl runs the trainer's storage code (`artifacts`, `compare`); its warnings are pmlctl's own
    `warning:` lines. Before pmlctl set up the trainer's log they came out bare, and notes not at all."""
    store = remote.store()
    Writer(store, "0000000a", 3).publish(tmp_path / "w", stage(tmp_path / "w", 10))
    times = 1 if remote.server.scheme == "gs" else 4  # S3: more than minio's own quick, silent retries
    fault = proxy.fail("GET", "checkpoints/", times=times)
    result = pmlctl("artifacts", remote.uri(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fault.hits == times
    assert re.search(r"^warning: cannot read from .*; trying again in \d+s$", result.stderr, re.M), result.stderr


# --- 9. replies lost after the server committed; uploads reported done that are not (issue 25) ---


def chief_that_published(remote) -> tuple[ModelDir, pathlib.Path]:
    """A chief of a new model dir that has published its first checkpoint (step 10), and its folder."""
    md = ModelDir(remote.uri(), None, "chief-0", 3, writer=True)
    assert md.latest_checkpoint() is None
    folder = md.path / "checkpoints"
    md.publish_checkpoint(stage(folder, 10))
    assert md.uploader.wait(60) and md.uploader.stopped is None
    return md, folder


POINTER_WRITE = {"s3": ("PUT", r"checkpoints/checkpoint$"), "gs": ("POST", r"ifGenerationMatch=")}
POINTER_READ = r"checkpoints/checkpoint($|\?)"


def test_a_pointer_write_whose_reply_is_lost_is_the_writer_s_own(remote, proxy, tmp_path):
    """The pointer is written, then every reply to the write is lost, and so is the read that
    would have shown it. Before, the retried publish found its own text there and the chief
    declared itself fenced (exit 177), naming its own incarnation."""
    md, folder = chief_that_published(remote)
    method, pattern = POINTER_WRITE[remote.server.scheme]
    lost = proxy.fail(method, pattern, times=3, status=0, committed=True)  # urllib3 tries 3 times
    # Then the next read of the pointer fails too (3 replies: minio's own retries), so the writer
    # cannot tell at once that its write took effect.
    unread = proxy.fail("GET", POINTER_READ, times=3, when=lambda: lost.hits >= 1)
    md.publish_checkpoint(stage(folder, 20))
    assert md.uploader.wait(60)
    assert md.uploader.stopped is None, md.uploader.stopped
    assert lost.hits >= 1 and unread.hits >= 1
    store = remote.store()
    assert checkpoints.published(store)[-1] == f"ckpt-{md.writer.incarnation}-20"
    assert checkpoints.writer_of(store.get_bytes(checkpoints.POINTER_KEY))[0] == md.writer.incarnation
    md.publish_checkpoint(stage(folder, 30))  # and it goes on publishing as the model dir's writer
    md.close(60)
    assert assert_consistent(store)[-1] == f"ckpt-{md.writer.incarnation}-30"
    os.close(md._lock)


def test_a_claim_answered_503_is_tried_again(remote, proxy, tmp_path):
    """A 503 on the claim's pointer write failed the start with exit 176, though nothing had changed."""
    store = remote.store()
    Writer(store, "0000000a", 3).publish(tmp_path / "w", stage(tmp_path / "w", 10))
    method, pattern = POINTER_WRITE[remote.server.scheme]
    # Once the claim's check of the store's preconditions is done (it ends deleting its scratch file).
    before = len(proxy.seen)
    probed = lambda: any(m == "DELETE" and "precondition-check" in p for m, p, _ in proxy.seen[before:])  # noqa: E731
    refused = proxy.fail(method, pattern, times=4, when=probed)  # S3: more than minio's quick retries
    claimed = Writer(store, "0000000b", 3)
    assert claimed.claim(tmp_path / "n") == tmp_path / "n" / "ckpt-0000000a-10"
    assert refused.hits == 4
    assert checkpoints.writer_of(store.get_bytes(checkpoints.POINTER_KEY))[0] == "0000000b"


@pytest.mark.parametrize("size", ["small", "multipart"])
def test_an_upload_reported_done_that_stored_nothing_is_sent_again_before_the_pointer_moves(
    remote, proxy, tmp_path, size
):
    """A write answered 200 with an error in its body (S3's CompleteMultipartUpload may do so) that
    stored nothing. Before, the pointer named a checkpoint without its data."""
    if size == "multipart" and remote.server.scheme == "gs":
        pytest.skip("S3's multipart completion; a GCS upload is one request or a resumable session")
    md = ModelDir(remote.uri(), None, "chief-0", 1, writer=True)
    assert md.latest_checkpoint() is None
    folder = md.path / "checkpoints"
    md.publish_checkpoint(stage(folder, 10))
    md.close(60)
    name = stage(folder, 20)
    if size == "multipart":  # over minio-py's 5 MiB part size
        write(folder / f"{name}.data-00000-of-00001", os.urandom(6 * 1024 * 1024))
        fault = proxy.fail("POST", r"data-00000-of-00001\?uploadId=", times=1, status=200, code="InternalError")
    elif remote.server.scheme == "s3":
        fault = proxy.fail("PUT", r"-20\.data-00000-of-00001$", times=1, status=200, code="InternalError")
    else:
        fault = proxy.fail("POST", r"^/upload/", times=1, status=200, code="InternalError")  # the data file, first
    md.publish_checkpoint(name)
    md.close(60)
    assert fault.hits == 1
    store = remote.store()
    assert assert_consistent(store) == [f"ckpt-{md.writer.incarnation}-20"]
    stored = store.get_bytes(f"checkpoints/ckpt-{md.writer.incarnation}-20.data-00000-of-00001")
    assert stored == (folder / f"{name}.data-00000-of-00001").read_bytes()
    if remote.server.scheme != "gs":
        assert remote.server.client()._list_multipart_uploads(remote.bucket).uploads == []
    os.close(md._lock)


# --- 10. another job, another run (issue 25) ------------------------------------------------------


def test_a_second_live_job_on_the_model_dir_is_refused_and_the_first_goes_on(remote, tmp_path):
    """Two jobs given one --model-dir: each restart claimed and fenced the other, for ever (177 is
    retryable). The job that was there first takes the model dir back, and the newcomer stops."""
    store = remote.store()
    first = Writer(store, "0000000a", 3, job="job-a")
    assert first.claim(tmp_path / "a") is None
    first.publish(tmp_path / "a", stage(tmp_path / "a", 10))
    second = Writer(store, "0000000b", 3, job="job-b")
    assert second.claim(tmp_path / "b") == tmp_path / "b" / "ckpt-0000000a-10"
    assert first.publish(tmp_path / "a", stage(tmp_path / "a", 20)) == ["ckpt-0000000a-10", "ckpt-0000000a-20"]
    text = store.get_bytes(checkpoints.POINTER_KEY).decode()
    assert "# job: job-a\n" in text and "# refuses: job-b\n" in text
    with pytest.raises(checkpoints.Taken, match=r"job job-a is writing to .* refuses this job \(job-b\)"):
        second.publish(tmp_path / "b", stage(tmp_path / "b", 20))
    assert assert_consistent(store) == ["ckpt-0000000a-10", "ckpt-0000000a-20"]
    assert first.publish(tmp_path / "a", stage(tmp_path / "a", 30))[-1] == "ckpt-0000000a-30"

    # A restart of the same job fences its old chief as before: that one exits 177.
    restarted = Writer(store, "0000000c", 3, job="job-a")
    restarted.claim(tmp_path / "c")
    with pytest.raises(Fenced, match="0000000c"):
        first.publish(tmp_path / "a", stage(tmp_path / "a", 40))
    # A job that is being stopped (SIGTERM) yields to a job that replaces it.
    stopping = Writer(store, "0000000d", 3, job="job-a", interrupted=lambda: True)
    stopping.claim(tmp_path / "d")
    Writer(store, "0000000e", 3, job="job-b").claim(tmp_path / "e")
    with pytest.raises(Fenced):
        stopping.publish(tmp_path / "d", stage(tmp_path / "d", 50))
    assert checkpoints.writer_of(store.get_bytes(checkpoints.POINTER_KEY))[0] == "0000000e"


def test_two_runs_started_on_an_empty_model_dir_one_stops_before_its_first_checkpoint(remote, tmp_path):
    """Both chiefs uploaded run.json unconditionally; the one fenced from the pointer left its own
    settings there, and its restart passed the check and resumed the other run's weights."""
    from pml_trainer import fingerprint
    from pml_trainer.options import TrainOptions

    store = remote.store()
    dirs = []
    for seed in (1, 2):
        opts = TrainOptions(model_dir=remote.uri(), seed=seed)
        md = ModelDir(remote.uri(), None, f"chief-{seed}", 3, writer=True)
        assert md.latest_checkpoint() is None
        fingerprint.write(opts, md.path)
        dirs.append((md, opts))
    for md, opts in dirs:  # as Checkpoints.save does at the first checkpoint, at the same time
        md.publish_record(fingerprint.FILE, fingerprint.other_run(opts))
        md.uploader.wait(60)
    (winner, won), (loser, _) = dirs
    winner.publish_checkpoint(stage(winner.path / "checkpoints", 10))
    winner.close(60)
    with pytest.raises(checkpoints.Taken, match=r"run\.json was written by another run \(--seed 1 there, 2 here\)"):
        loser.publish_checkpoint(stage(loser.path / "checkpoints", 10))
    assert fingerprint.parsed(store.get_bytes(fingerprint.FILE))["settings"]["--seed"] == 1
    assert assert_consistent(store) == [f"ckpt-{winner.writer.incarnation}-10"]
    # The same run's later start replaces it (a new code digest), conditionally.
    again = ModelDir(remote.uri(), None, "chief-1", 3, writer=True)
    assert again.latest_checkpoint() is not None
    fingerprint.write(won, again.path)
    again.publish_record(fingerprint.FILE, fingerprint.other_run(won))
    again.close(60)
    for md in (winner, loser, again):
        os.close(md._lock)


# --- 11. a second reading of issue 25 ----------------------------------------------------------------


def test_a_take_back_does_not_list_an_upload_the_other_job_pruned(remote, tmp_path, monkeypatch):
    """Job a had uploaded step 20's files and checked them when job b claimed and published: b's prune
    deleted them as a killed writer's leftovers (no pointer listed them, and the pointer was b's own).
    Job a then took the model dir back and listed its step 20 without its files: the newest checkpoint
    was lost, and with --keep-checkpoints 1 every one."""
    store = remote.store()
    first = Writer(store, "0000000a", 2, job="job-a")
    first.publish(tmp_path / "a", stage(tmp_path / "a", 10))
    second = Writer(store, "0000000b", 2, job="job-b")

    def second_job_claims_and_publishes(step):
        if second.claimed:
            return
        second.claim(tmp_path / "b")
        second.publish(tmp_path / "b", stage(tmp_path / "b", 20))  # prunes ckpt-0000000a-20's upload

    monkeypatch.setattr(faults, "pause_before_publish", second_job_claims_and_publishes)
    assert first.publish(tmp_path / "a", stage(tmp_path / "a", 20)) == ["ckpt-0000000a-10", "ckpt-0000000a-20"]
    monkeypatch.undo()
    assert assert_consistent(store) == ["ckpt-0000000a-10", "ckpt-0000000a-20"]
    assert store.get_bytes("checkpoints/ckpt-0000000a-20.index") == b"index 20 "
    with pytest.raises(checkpoints.Taken):
        second.publish(tmp_path / "b", stage(tmp_path / "b", 30))


def test_a_refusal_outlives_a_restart_of_the_job_that_refused(remote, tmp_path):
    """Job a refused job b (b claimed while a wrote), then a's chief restarted (a preemption, an outage
    longer than reads wait): its new incarnation's claim dropped the refusal, so b, at its next write,
    took the model dir back and refused a, the job that was there first, which stopped for good."""
    store = remote.store()
    first = Writer(store, "0000000a", 3, job="job-a")
    first.publish(tmp_path / "a", stage(tmp_path / "a", 10))
    second = Writer(store, "0000000b", 3, job="job-b")
    second.claim(tmp_path / "b")
    first.publish(tmp_path / "a", stage(tmp_path / "a", 20))  # takes it back, refusing job-b
    restarted = Writer(store, "0000000c", 3, job="job-a")
    assert restarted.claim(tmp_path / "c").name == "ckpt-0000000a-20"
    with pytest.raises(checkpoints.Taken, match=r"refuses this job \(job-b\)"):
        second.publish(tmp_path / "b", stage(tmp_path / "b", 30))
    assert restarted.publish(tmp_path / "c", stage(tmp_path / "c", 30))[-1] == "ckpt-0000000c-30"
    assert "# refuses: job-b\n" in store.get_bytes(checkpoints.POINTER_KEY).decode()


@pytest.mark.parametrize("method", ["write", "delete"])
def test_a_claim_whose_store_probe_is_answered_503_is_tried_again(remote, proxy, tmp_path, method):
    """The probe of the store's preconditions writes and deletes scratch files before the claim; one
    503 there (GCS: its uploads are not retried by the client; S3: more than urllib3's two quick
    retries) failed the chief's start with exit 176, though a 503 on the claim itself is waited out."""
    store = remote.store()
    Writer(store, "0000000a", 3).publish(tmp_path / "w", stage(tmp_path / "w", 10))
    s3 = remote.server.scheme != "gs"
    times = 3 if s3 else 1
    if method == "write":  # S3 names the file in the path; a GCS upload names it in the body
        fault = proxy.fail("PUT" if s3 else "POST", r"pml-precondition-check" if s3 else r"^/upload/", times=times)
    else:
        fault = proxy.fail("DELETE", r"pml-precondition-check", times=times)
    writer = Writer(store, "0000000b", 3)
    assert writer.claim(tmp_path / "n") == tmp_path / "n" / "ckpt-0000000a-10"
    assert fault.hits == times
    assert checkpoints.writer_of(store.get_bytes(checkpoints.POINTER_KEY))[0] == "0000000b"
    assert [e.name for e in store.list() if e.name.startswith(storage.PRECONDITION_PROBE)] == []


def test_a_job_refused_stays_refused_when_a_third_one_is_refused_after_it(remote, tmp_path):
    """Three jobs given one --model-dir (the same job submitted under three names): the first refused
    the second, then the third; the pointer named only the last refused, so the second, at its next
    write, took the model dir back and refused the first, which stopped for good."""
    store = remote.store()
    first = Writer(store, "0000000a", 3, job="job-a")
    first.publish(tmp_path / "a", stage(tmp_path / "a", 10))
    second, third = Writer(store, "0000000b", 3, job="job-b"), Writer(store, "0000000c", 3, job="job-c")
    second.claim(tmp_path / "b")
    first.publish(tmp_path / "a", stage(tmp_path / "a", 20))  # refuses job-b
    third.claim(tmp_path / "c")
    first.publish(tmp_path / "a", stage(tmp_path / "a", 30))  # refuses job-c too
    for writer, step in ((second, 40), (third, 40)):
        with pytest.raises(checkpoints.Taken, match=rf"refuses this job \({writer.job}\)"):
            writer.publish(tmp_path / writer.incarnation, stage(tmp_path / writer.incarnation, step))
    assert first.publish(tmp_path / "a", stage(tmp_path / "a", 40))[-1] == "ckpt-0000000a-40"
    text = store.get_bytes(checkpoints.POINTER_KEY).decode()
    assert "# refuses: job-b\n# refuses: job-c\n" in text


def test_a_pointer_write_answered_503_does_not_upload_the_checkpoint_again(remote, proxy, tmp_path, monkeypatch):
    """The uploader tries a publish again from the start after any error, and reads fail at once in
    its thread: a 503 on the pointer's write, or on a read of it, sent every file of the checkpoint
    again, each time (a large checkpoint, while the service throttles the folder)."""
    monkeypatch.setattr(uploader_module, "FIRST_RETRY", 0.1)
    md, folder = chief_that_published(remote)
    method, pattern = POINTER_WRITE[remote.server.scheme]
    refused = proxy.fail(method, pattern, times=3 if remote.server.scheme == "s3" else 1)
    unread = proxy.fail("GET", POINTER_READ, times=3, when=lambda: refused.hits >= refused.times)
    before = len(proxy.seen)
    md.publish_checkpoint(stage(folder, 20))
    md.close(60)
    assert refused.hits == refused.times and unread.hits == 3
    data = f"ckpt-{md.writer.incarnation}-20.data-00000-of-00001"
    uploads = [p for m, p, _ in proxy.seen[before:] if m in ("PUT", "POST") and data in p]
    if remote.server.scheme == "s3":  # a GCS upload names the file in its body
        assert len(uploads) == 1, uploads
    else:
        gcs_uploads = [p for m, p, _ in proxy.seen[before:] if m == "POST" and p.startswith("/upload/")]
        assert len(gcs_uploads) == 2 + refused.hits + 1, gcs_uploads  # two files, the pointer's tries
    assert assert_consistent(remote.store())[-1] == f"ckpt-{md.writer.incarnation}-20"
    os.close(md._lock)


def test_a_job_that_found_the_model_dir_empty_does_not_take_it_from_the_job_that_wrote_first(remote, tmp_path):
    """Two jobs started on an empty model dir (the same settings, so run.json let both through); the
    first wrote three checkpoints while the second, which had claimed nothing (there was nothing to
    claim), trained towards its first. That one then took the model dir "back", listed only its own
    step 10 (the later steps were "another run's") and deleted the first job's checkpoints, which then
    stopped for good (exit 2): hours of training gone. It now exits for a restart (177) instead, which
    claims the model dir as a newcomer: resuming from the first job's checkpoint, and refused by it."""
    store = remote.store()
    first, second = Writer(store, "0000000a", 3, job="job-a"), Writer(store, "0000000b", 3, job="job-b")
    assert first.claim(tmp_path / "a") is None
    assert second.claim(tmp_path / "b") is None
    for step in (100, 200, 300):
        first.publish(tmp_path / "a", stage(tmp_path / "a", step))
    with pytest.raises(Fenced, match=r"job job-a wrote .* first.*exiting for a restart"):
        second.publish(tmp_path / "b", stage(tmp_path / "b", 10))
    assert assert_consistent(store) == [f"ckpt-0000000a-{s}" for s in (100, 200, 300)]
    restarted = Writer(store, "0000000c", 3, job="job-b")
    assert restarted.claim(tmp_path / "c").name == "ckpt-0000000a-300"
    assert first.publish(tmp_path / "a", stage(tmp_path / "a", 400))[-1] == "ckpt-0000000a-400"
    with pytest.raises(checkpoints.Taken):
        restarted.publish(tmp_path / "c", stage(tmp_path / "c", 310))
    assert assert_consistent(store) == [f"ckpt-0000000a-{s}" for s in (200, 300, 400)]
