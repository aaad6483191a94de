"""The background uploader of a remote model dir: training hands it files and goes on.

One thread uploads in order, so a checkpoint's pointer follows its files and result.json
follows the SavedModel. An upload the service cannot take now (unreachable, 5xx, throttled) is
retried with backoff and a warning until the storage answers again; nothing queued is dropped
except checkpoints that newer ones superseded. Two things stop it for good, and the next
publish() of the task raises them: a permanent error (access denied, an expired token), which
no retry cures, and being fenced (checkpoints.Fenced), when another chief took the model dir over.
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import Callable

from pml_trainer import checkpoints
from pml_trainer.log import log
from pml_trainer.storage import StorageError, StorageUnavailable, Store, fail_fast_in_this_thread

FIRST_RETRY, LAST_RETRY = 1.0, 10.0  # seconds between attempts: doubling up to the last
# The uploader's own CPU work (reading, hashing for request signatures, TLS) runs at a lower
# priority than training: with every core busy training, uploads wait, training does not.
NICENESS = 10


class Uploader:
    def __init__(self, store: Store, staging: pathlib.Path, keep: int, writer: checkpoints.Writer | None = None):
        """`writer` fences every upload (the chief's); without one, files go up unchecked (the
        evaluator's eval.jsonl) and checkpoints are published by a writer of their own."""
        self.store, self.staging, self.keep = store, staging, keep
        self.writer = writer
        self.failed: list[str] = []
        self.other_run: Callable[[bytes], list[str]] | None = None  # for record(): see Writer.publish_record
        self.stopped: Exception | None = None  # Fenced, or a permanent StorageError
        self._queue: list[tuple[str, str]] = []  # (kind, path relative to staging)
        self._current: tuple[str, str] | None = None
        # When storage stopped answering; kept across queued items, since the item that was
        # failing may be superseded and dropped before storage comes back.
        self.failing_since: float | None = None
        self._changed = threading.Condition()
        threading.Thread(target=self._run, name="uploader", daemon=True).start()

    def checkpoint(self, name: str) -> None:
        """Publish checkpoint `name` (e.g. ckpt-120) from staging/checkpoints."""
        self._add(("checkpoint", name))

    def record(self, relative: str, other_run: Callable[[bytes], list[str]]) -> None:
        """Publish the run's record (run.json) through the writer, which refuses another run's."""
        self.other_run = other_run
        self._add(("record", relative))

    def file(self, relative: str) -> None:
        self._add(("file", relative))

    def own_file(self, relative: str) -> None:
        """A file under a key no other writer uses (a chief's record): never fenced, since it can
        undo nobody's work, and a fence check could claim or take the model dir back for it."""
        self._add(("own", relative))

    def tree(self, relative: str) -> None:
        self._add(("tree", relative))

    def _add(self, job: tuple[str, str]) -> None:
        with self._changed:
            if self.stopped is not None:
                return
            # Files are read when their upload starts, so one queued upload carries the latest content.
            if job not in self._queue:
                self._queue.append(job)
            self._changed.notify_all()

    def pending(self) -> int:
        with self._changed:
            return len(self._queue) + (self._current is not None)

    def unpublished(self) -> list[str]:
        """The checkpoints handed over and not yet published, oldest first."""
        with self._changed:
            jobs = ([self._current] if self._current else []) + self._queue
            return [name for kind, name in jobs if kind == "checkpoint"]

    def wait(self, timeout: float) -> bool:
        """Wait until everything handed over so far is uploaded; False if `timeout` s were not enough."""
        return self.wait_until(lambda: not (self._queue or self._current), timeout)

    def wait_until(self, condition, timeout: float) -> bool:
        """Wait until `condition()` (checked under the lock at each change) or the uploader stopped for
        good; False if `timeout` s were not enough."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition() and self.stopped is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _run(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)  # this thread only
        fail_fast_in_this_thread()
        while True:
            with self._changed:
                while not self._queue:
                    self._changed.wait()
                self._current = self._queue.pop(0)
            self._upload_until_done(*self._current)
            with self._changed:
                self._current = None
                self._changed.notify_all()

    def _stop(self, err: Exception, line: str) -> None:
        log.error(line)
        with self._changed:
            self.stopped = err
            self._queue.clear()
            self._changed.notify_all()

    def _upload_until_done(self, kind: str, relative: str) -> None:
        delay = FIRST_RETRY
        while True:
            try:
                self._upload(kind, relative)
            except FileNotFoundError:
                return  # replaced or pruned locally meanwhile: a newer upload is queued or not needed
            except (checkpoints.Fenced, checkpoints.Taken) as err:
                self._stop(err, str(err))
                return
            except StorageUnavailable as err:
                with self._changed:
                    self.failing_since = self.failing_since or time.monotonic()
                    self._changed.notify_all()
                log.warning(f"{err}; retrying in {delay:.0f}s; training goes on ({self.pending()} upload(s) waiting)")
                time.sleep(delay)
                if self.stopped is not None:  # stopped meanwhile: the item is not wanted any more
                    return
                delay = min(delay * 2, LAST_RETRY)
                continue
            except StorageError as err:
                # Access denied, an expired session token, a deleted bucket: retrying changes nothing,
                # and training on would only pile up work that cannot be saved.
                self._stop(err, f"{err}; not retrying: uploads stop, and so does training")
                return
            except Exception as err:  # a bug must not stop the uploads queued behind this one
                self.failed.append(relative)
                log.error(f"uploading {relative} failed ({type(err).__name__}: {err}); skipping it")
                return
            if self.failing_since is not None:
                log.info(
                    f"storage {self.store.location} answers again: uploaded {relative} "
                    f"after {time.monotonic() - self.failing_since:.0f}s of retries"
                )
                with self._changed:
                    self.failing_since = None
                    self._changed.notify_all()
            return

    def _upload(self, kind: str, relative: str) -> None:
        if kind == "checkpoint":
            if self.writer is None:
                self.writer = checkpoints.Writer(self.store, checkpoints.new_incarnation(), self.keep)
            self.writer.publish(self.staging / checkpoints.FOLDER, relative)
            return
        if kind == "record":
            assert self.writer is not None
            assert self.other_run is not None
            self.writer.publish_record(self.staging / relative, relative, self.other_run)
            return
        if kind == "own":
            self.store.put_file(self.staging / relative, relative)
            return
        if self.writer is not None:
            self.writer.raise_if_fenced()  # a superseded chief's metrics must not replace the new one's
        if kind == "file":
            self.store.put_file(self.staging / relative, relative)
        else:
            for path in sorted(p for p in (self.staging / relative).rglob("*") if p.is_file()):
                self.store.put_file(path, path.relative_to(self.staging).as_posix())
