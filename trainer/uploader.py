"""The background uploader of a remote model dir: training hands it files and goes on.

One thread uploads in order, so a checkpoint's pointer follows its files and result.json
follows the SavedModel. An upload that fails is retried with backoff and a warning until the
storage answers again; nothing queued is dropped except checkpoints that newer ones superseded.
"""

from __future__ import annotations

import os
import pathlib
import threading
import time

from trainer import checkpoints
from trainer.report import say
from trainer.storage import Store, StorageError

FIRST_RETRY, LAST_RETRY = 1.0, 10.0  # seconds between attempts: doubling up to the last
# The uploader's own CPU work (reading, hashing for request signatures, TLS) runs at a lower
# priority than training: with every core busy training, uploads wait, training does not.
NICENESS = 10


class Uploader:
    def __init__(self, store: Store, staging: pathlib.Path, keep: int):
        self.store, self.staging, self.keep = store, staging, keep
        self.failed: list[str] = []
        self._queue: list[tuple[str, str]] = []  # (kind, path relative to staging)
        self._current: tuple[str, str] | None = None
        self._kept: list[str] | None = None  # what the remote pointer lists; read on first use
        # When storage stopped answering; kept across queued items, since the item that was
        # failing may be superseded and dropped before storage comes back.
        self._failing_since: float | None = None
        self._changed = threading.Condition()
        threading.Thread(target=self._run, name="uploader", daemon=True).start()

    def checkpoint(self, name: str) -> None:
        """Publish checkpoint `name` (e.g. ckpt-120) from staging/checkpoints."""
        self._add(("checkpoint", name))

    def file(self, relative: str) -> None:
        self._add(("file", relative))

    def tree(self, relative: str) -> None:
        self._add(("tree", relative))

    def _add(self, job: tuple[str, str]) -> None:
        with self._changed:
            # Files are read when their upload starts, so one queued upload carries the latest content.
            if job not in self._queue:
                self._queue.append(job)
            self._changed.notify_all()

    def pending(self) -> int:
        with self._changed:
            return len(self._queue) + (self._current is not None)

    def wait(self, timeout: float) -> bool:
        """Wait until everything handed over so far is uploaded; False if `timeout` s were not enough."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._queue or self._current:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _run(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)  # this thread only
        while True:
            with self._changed:
                while not self._queue:
                    self._changed.wait()
                self._current = self._queue.pop(0)
            self._until_done(*self._current)
            with self._changed:
                self._current = None
                self._changed.notify_all()

    def _until_done(self, kind: str, relative: str) -> None:
        delay = FIRST_RETRY
        while True:
            try:
                self._upload(kind, relative)
            except FileNotFoundError:
                return  # replaced or pruned locally meanwhile: a newer upload is queued or not needed
            except StorageError as err:
                self._failing_since = self._failing_since or time.monotonic()
                say(f"warning: {err}; retrying in {delay:.0f}s; training goes on "
                    f"({self.pending()} upload(s) waiting)")
                time.sleep(delay)
                delay = min(delay * 2, LAST_RETRY)
                continue
            except Exception as err:  # a bug must not stop the uploads queued behind this one
                self.failed.append(relative)
                say(f"error: uploading {relative} failed ({type(err).__name__}: {err}); skipping it")
                return
            if self._failing_since is not None:
                say(f"storage {self.store.location} answers again: uploaded {relative} "
                    f"after {time.monotonic() - self._failing_since:.0f}s of retries")
                self._failing_since = None
            return

    def _upload(self, kind: str, relative: str) -> None:
        if kind == "checkpoint":
            if self._kept is None:
                self._kept = checkpoints.published(self.store)
            folder = self.staging / checkpoints.FOLDER
            self._kept = checkpoints.publish(self.store, folder, relative, self.keep, self._kept) or self._kept
        elif kind == "file":
            self.store.put_file(self.staging / relative, relative)
        else:
            for path in sorted(p for p in (self.staging / relative).rglob("*") if p.is_file()):
                self.store.put_file(path, path.relative_to(self.staging).as_posix())
