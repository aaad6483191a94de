"""A task's model dir, wherever it is.

Tasks always write into a local folder (`path`). For a local model dir that folder is the model
dir itself, as before. For gs:// or s3:// it is a staging folder on this machine, and what the
task publishes is uploaded from it in the background; checkpoints and the files a task appends
to are fetched from the remote model dir when the task starts.

The chief of a remote model dir is its writer (checkpoints.Writer): it claims the model dir when
it restores, and stops if another chief takes it over. Its staging folder outlives it: a restarted
chief (a new container in the same pod, whose emptyDir survives) finds there the checkpoints and
metrics its predecessor saved but could not upload, during an outage or in the 20 s after SIGTERM,
and publishes them rather than train that stretch again.

The chief of a local model dir, which may be a volume that machines share, holds a lock on it
instead (`hold_local`).
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import socket
import time
from collections.abc import Callable

from pml_trainer import checkpoints, chiefs, durable, faults, fingerprint, staging
from pml_trainer.log import log
from pml_trainer.storage import StorageError, Store, is_remote, open_store
from pml_trainer.uploader import Uploader

CLOSE_TIMEOUT = 600.0  # how long a finished task waits for its last uploads
# While storage fails, training pauses once this many checkpoints wait to be published: what a
# lost pod takes with it stays bounded (the older ones are on this machine only).
UNPUBLISHED_LIMIT = 2
WRITER_FILE = ".writer"  # in the staging folder: the incarnation whose checkpoints are staged there
LOCK_FILE = ".pml-writer.lock"  # in a local model dir: held by its chief (hold_local)
_held: dict[pathlib.Path, int] = {}  # the local model dirs this process holds, and their lock's fd
# What a writer's staging keeps across a restart: run.json, to show which run the checkpoints are of.
KEPT = (checkpoints.FOLDER, "metrics.jsonl", WRITER_FILE, fingerprint.FILE)


class ModelDir:
    def __init__(
        self,
        uri: str,
        s3_endpoint: str | None,
        task: str,
        keep: int,
        writer: bool = False,
        adopt_staged: bool = True,
        interrupted: Callable[[], bool] = lambda: False,
        single_writer: bool = False,
    ):
        """`writer`: this task is the chief, which publishes checkpoints. `adopt_staged`: it alone
        restores (not so under MultiWorkerMirroredStrategy, where every worker restores what the
        remote pointer names). `interrupted`: SIGTERM came, so a pause for storage must end.
        `single_writer`: a store that ignores write preconditions is only warned about."""
        self.uri = uri.rstrip("/")
        self.store: Store | None = None
        self.uploader: Uploader | None = None
        self.writer: checkpoints.Writer | None = None
        self.interrupted = interrupted
        self.chief: chiefs.Record | None = None
        if not is_remote(uri):
            self.path = pathlib.Path(uri)
            if writer:
                hold_local(self.path)
                self.chief = chiefs.Record(self.put)
            return
        self.store = open_store(uri, s3_endpoint)
        incarnation = checkpoints.new_incarnation()
        staging.sweep()
        self.path, self._lock = staging.take(staging.folder(self.uri, task), incarnation)
        self._staged: tuple[pathlib.Path, str] | None = None
        previous = self.path / WRITER_FILE
        staged_by = previous.read_text().strip() if writer and previous.is_file() else None
        local = self.path / checkpoints.FOLDER
        staged = checkpoints.staged_checkpoint(local) if staged_by and adopt_staged else None
        if staged is not None:
            self._staged = (staged, staged_by)
        # The remote model dir is the truth for everything else an earlier run left here.
        for child in list(self.path.iterdir()) if self.path.is_dir() else []:
            if staged is not None and child.name in KEPT:
                continue
            checkpoints.remove(child)
        local.mkdir(parents=True, exist_ok=True)
        if writer:
            job = os.environ.get(checkpoints.JOB_ENV) or None
            self.writer = checkpoints.Writer(self.store, incarnation, keep, job, interrupted, single_writer)
            (self.path / WRITER_FILE).write_text(incarnation + "\n")
        self.uploader = Uploader(self.store, self.path, keep, self.writer)
        if writer:
            self.chief = chiefs.Record(self.put)

    def where(self, relative: str) -> str:
        """Where `relative` ends up, for messages and result.json."""
        return f"{self.uri}/{relative}" if self.store else str(self.path / relative)

    def fetch(self, relative: str) -> None:
        """Bring a file the task rewrites or appends to (metrics.jsonl, eval.jsonl) here first.

        A staged copy that extends the remote one is newer (its last upload did not get through)
        and stays.
        """
        if not self.store:
            return
        local = self.path / relative
        remote = self.store.get_bytes(relative)
        if remote is None or (local.is_file() and local.read_bytes().startswith(remote)):
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(remote)

    def latest_checkpoint(self) -> str | None:
        """The path prefix of the checkpoint to resume from, downloaded into path/checkpoints.

        The chief claims the model dir here (see checkpoints.Writer.claim) and may resume from a
        newer checkpoint it staged before a restart, which it then publishes first.
        """
        local = self.path / checkpoints.FOLDER
        if not self.store:
            latest = checkpoints.latest_local(local)
        elif self.writer is None:
            latest = checkpoints.fetch_latest(self.store, local)
        else:
            staged, staged_by = self._staged or (None, None)
            record = self.path / fingerprint.FILE
            staged_run = (fingerprint.FILE, record.read_bytes()) if staged and record.is_file() else None
            faults.pause_before_claim()
            latest = self.writer.claim(local, staged, staged_by, staged_run)
            if latest is not None and latest == staged:
                checkpoints.keep_only(local, staged.name)  # the manager starts from it
                self.uploader.checkpoint(staged.name)
            elif staged is not None:
                # Older than what is published, or of a run the model dir does not show (emptied, or
                # another chief's since): it goes, and the metrics staged with it.
                why = "the model dir does not show the run it belongs to" if latest is None else "not the newest"
                log.info(f"not resuming from {staged.name}, staged in {self.path}: {why}; removing it")
                (self.path / "metrics.jsonl").unlink(missing_ok=True)
                if latest is None:
                    for path in [*local.glob("ckpt-*"), local / checkpoints.POINTER]:
                        checkpoints.remove(path)
        if self.chief is not None:
            step = checkpoints.step_of(latest.name) if latest else 0
            self.chief.resumed_from(step)
            chiefs.check_progress(self.chief_records(), self.chief.key, step)
        return str(latest) if latest else None

    def chief_records(self) -> list[dict]:
        """The model dir's records of its chiefs (pml_trainer.chiefs), this one's included."""
        # Named by their start, so the newest are last; a long job's early ones are not needed.
        recent = 4 * chiefs.STALL_AFTER
        if self.store is None:
            paths = sorted((self.path / chiefs.FOLDER).glob("*.json"))[-recent:]
            files = {f"{chiefs.FOLDER}/{p.name}": p.read_bytes() for p in paths}
        else:
            names = [e.name for e in self.store.list(chiefs.FOLDER)][-recent:]
            files = {name: self.store.get_bytes(name) or b"" for name in names}
            if self.chief is not None:  # its own may still wait in the uploader's queue
                files[self.chief.key] = (self.path / self.chief.key).read_bytes()
        return chiefs.parse(files)

    def publish_checkpoint(self, name: str) -> None:
        """Hand checkpoint `name` to the uploader. While storage fails, training pauses here once
        UNPUBLISHED_LIMIT checkpoints wait, until one is published or SIGTERM comes."""
        if not self.uploader:
            return
        self._raise_if_stopped()
        self.uploader.checkpoint(name)
        waiting = self.uploader.unpublished()
        if self.uploader.failing_since is None or len(waiting) < UNPUBLISHED_LIMIT or self.interrupted():
            return
        began = time.monotonic()
        log.info(
            f"pausing training: storage {self.uri} has failed for {began - self.uploader.failing_since:.0f}s "
            f"and {len(waiting)} checkpoints wait to be published ({', '.join(waiting)}); training resumes "
            "once they are, so that no more than this is lost if this machine goes"
        )
        while not self.uploader.wait_until(lambda: len(self.uploader.unpublished()) < UNPUBLISHED_LIMIT, 1.0):
            if self.interrupted():
                log.info(
                    "SIGTERM during the pause: saving and leaving; the checkpoints stay on this machine "
                    "for a restart here"
                )
                return
        self._raise_if_stopped()
        log.info(f"training resumes after a pause of {time.monotonic() - began:.0f}s")

    def done(self) -> None:
        """The task has ended with everything it wrote published: its staging folder goes, so that
        no later job naming this model dir finds the run's checkpoints here (pml_trainer.staging)."""
        if not self.store or self.uploader is None:
            return
        if self.uploader.pending() or self.uploader.failed or self.uploader.stopped is not None:
            return
        staging.remove(self.path, self._lock)

    def publish_record(self, relative: str, other_run: Callable[[bytes], list[str]]) -> None:
        """Upload the run's record (run.json), which the chief writes only where no other run's is
        (checkpoints.Writer.publish_record); other tasks publish none."""
        if self.uploader and self.writer:
            self._raise_if_stopped()
            self.uploader.record(relative, other_run)

    def publish(self, relative: str) -> None:
        """Upload a file, or every file of a folder, as it is when its upload starts."""
        if self.uploader:
            self._raise_if_stopped()
            (self.uploader.tree if (self.path / relative).is_dir() else self.uploader.file)(relative)

    def put(self, relative: str, data: bytes) -> None:
        """Write a file of this chief's own (its record) here and publish it, unfenced: its key is
        its alone. Once uploads stopped for good it stays here."""
        path = self.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        durable.write_text(path, data.decode())
        if self.uploader and self.uploader.stopped is None:
            self.uploader.own_file(relative)

    def ended(self, code: int) -> None:
        """The chief is leaving with exit `code`: its record says so (pml_trainer.chiefs)."""
        if self.chief is not None:
            self.chief.ended(code)

    def _raise_if_stopped(self) -> None:
        if self.uploader and self.uploader.stopped is not None:
            raise self.uploader.stopped

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Wait for the uploads; raise StorageError if the storage did not take them in time, and
        what stopped the uploader (Fenced, a permanent StorageError) if something did."""
        if self.uploader and not self.uploader.wait(timeout):
            raise StorageError(
                f"{self.uri}: {self.uploader.pending()} upload(s) still failing after "
                f"{timeout:.0f}s; the latest published checkpoint is kept, and the newer "
                "ones stay on this machine for a restart here"
            )
        self._raise_if_stopped()
        if self.uploader and self.uploader.failed:
            raise StorageError(f"{self.uri}: could not upload {', '.join(self.uploader.failed)}")


def hold_local(folder: pathlib.Path) -> None:
    """Make this process the only chief writing the local model dir `folder`, until it exits;
    raise checkpoints.Fenced, naming the holder, while another process anywhere holds it.

    A local model dir has no pointer to compare and swap (see checkpoints.Writer), yet it may be a
    volume that two machines mount (NFS, a shared PersistentVolume): a replaced pod's chief still
    terminating beside its replacement, or two jobs given one folder, would save checkpoints under
    the same names and each delete the other's. So its chief holds flock(2) on a file in it, which
    the kernel releases when the process ends, however it ends; the second chief exits 177
    (retryable), and its restart gets in once the first has gone. Across machines this holds on
    NFS, where Linux emulates flock with fcntl byte-range locks that the server grants (flock(2),
    NOTES: since Linux 2.6.12; that is also why the file is opened for writing), unless the volume is
    mounted with `local_lock=flock` or `all`, or `nolock` (nfs(5)), which keeps the lock on one
    machine. NFSv4 releases the lock of a machine that died when its lease lapses (90 s by
    default); NFSv3's lock manager only when that machine comes back (docs/storage.md says so).

    Idempotent within a process: flock locks belong to an open file, so a second open here would
    refuse this very process. A file system that cannot lock is warned about, not refused: a chief
    that ran there before still runs, unfenced as before.
    """
    folder = folder.resolve()
    if folder in _held:
        return
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        log.warning(f"cannot lock {path} ({err.strerror}): a second chief writing {folder} would not be refused")
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 512).decode(errors="replace").strip() or "a process that has not said who it is yet"
        os.close(fd)
        raise checkpoints.Fenced(
            f"--model-dir {folder} is being written by another chief ({holder}); exiting for a restart, which gets "
            "in once that one has ended. If it should not be running, stop it (pmlctl delete), or give this "
            "job another --model-dir"
        ) from None
    except OSError as err:  # ENOLCK, EOPNOTSUPP: no locks on this file system
        os.close(fd)
        log.warning(f"cannot lock {path} ({err.strerror}): a second chief writing {folder} would not be refused")
        return
    since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n".encode(), 0)
    _held[folder] = fd
