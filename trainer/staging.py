"""The staging folders of remote model dirs on this machine: `$TMPDIR/pml-staging/<hash>-<task>`.

A task of a gs:// or s3:// model dir writes into its staging folder, and the uploader publishes
from it. The folder outlives a task that did not finish: a restarted chief (a new container in
the same pod, whose emptyDir survives) finds there what its predecessor saved but could not
upload, and publishes it (model_dir.ModelDir.latest_checkpoint). It must not outlive that purpose:
a finished task removes its folder, a discarded run (--restart) takes its folders with it, and a
folder nobody has held for STALE_DAYS is removed at the next start of any task on this machine.
Otherwise a later job naming the same URI, on an emptied bucket or a new server, would find a
finished run's checkpoints here and publish them as its own.

Each folder has a lock file beside it (`<folder>.lock`, flock(2)), held by the process that
stages there and released by the kernel when it dies: a held folder is never touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pathlib
import shutil
import tempfile
import time

from pml_trainer.log import log

STAGING_ENV = "PML_STAGING_DIR"
# A folder no process has held for this long belongs to a job that is not coming back: a pod's
# emptyDir dies with the pod, and a restart on this machine comes within minutes, not days.
STALE_DAYS = 7.0


def root() -> pathlib.Path:
    return pathlib.Path(os.environ.get(STAGING_ENV) or pathlib.Path(tempfile.gettempdir()) / "pml-staging")


def folder(uri: str, task: str) -> pathlib.Path:
    """The same folder for a task each time it starts on this machine, so a restart finds it again."""
    return root() / f"{_prefix(uri)}-{task}"


def _prefix(uri: str) -> str:
    return hashlib.sha1(uri.rstrip("/").encode()).hexdigest()[:12]


def take(path: pathlib.Path, incarnation: str) -> tuple[pathlib.Path, int]:
    """Lock the task's staging folder for this process (flock(2), released when the process dies);
    a folder another live process holds (two jobs on one model dir, on one machine) is left to it,
    and this process stages in a folder of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(_lock_of(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return path, lock
    except BlockingIOError:
        os.close(lock)
        own = path.with_name(f"{path.name}-{incarnation}")
        log.info(f"{path} is in use by another process on this machine; staging in {own}")
        own.mkdir(parents=True)
        lock = os.open(_lock_of(own), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return own, lock


def remove(path: pathlib.Path, lock: int) -> None:
    """Remove a staging folder this process holds, and its lock file, once all of it is published."""
    _delete(path)
    os.close(lock)


def clear(uri: str) -> int:
    """Remove every staging folder of model dir `uri` that no live process holds (--restart
    discards the run, and what it staged goes with it); how many went."""
    base = root()
    found = [p for p in base.glob(f"{_prefix(uri)}-*") if p.is_dir()] if base.is_dir() else []
    return sum(_remove_unheld(p) for p in found)


def sweep(now: float | None = None) -> None:
    """Remove the staging folders that no process has held for STALE_DAYS, saying so in one line."""
    base = root()
    if not base.is_dir():
        return
    bound = (now or time.time()) - STALE_DAYS * 86400
    stale = [p for p in base.iterdir() if p.is_dir() and _last_held(p) < bound]
    gone = [p for p in stale if _remove_unheld(p)]
    if gone:
        log.info(
            f"removed {len(gone)} staging folder(s) in {base} that no task has used for {STALE_DAYS:.0f} days "
            f"({', '.join(p.name for p in gone)})"
        )


def _lock_of(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f"{path.name}.lock")


def _last_held(path: pathlib.Path) -> float:
    """When a task last wrote there: the newest modification time of the folder, its files or its lock."""
    times = [p.stat().st_mtime for p in [path, *path.rglob("*")] if p.exists()]
    lock = _lock_of(path)
    return max([*times, lock.stat().st_mtime] if lock.exists() else times)


def _remove_unheld(path: pathlib.Path) -> bool:
    """Remove `path` and its lock file unless a live process holds the lock."""
    try:
        fd = os.open(_lock_of(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # held: a task is staging there now
    _delete(path)
    os.close(fd)
    return True


def _delete(path: pathlib.Path) -> None:
    """The folder, then its lock file: while the lock is still held, by the caller."""
    shutil.rmtree(path, ignore_errors=True)
    _lock_of(path).unlink(missing_ok=True)
