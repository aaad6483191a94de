"""Where a job's files live: a local folder, `gs://bucket/prefix` or `s3://bucket/prefix`.

One small interface for the three kinds, used by the trainer (checkpoints, outputs, datasets)
and by `pmlctl artifacts`. It stays free of TensorFlow, and the cloud clients are imported only
when a remote location is opened, so that the CLI starts fast.

This module holds what every backend shares: parsing a location, the Store interface with its
patient reads, the errors, and the startup write check. One module per backend implements it
(local.py, gcs.py, s3.py); open_store imports them only when it needs one. The storage layer
imports nothing of the trainer but pml_trainer.log and pml_trainer.durable.
"""

from __future__ import annotations

import builtins
import pathlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pml_trainer.log import log

T = TypeVar("T")

SCHEMES = ("gs", "s3")
PRECONDITION_PROBE = ".pml-precondition-check"
# Both services' rules, loosely: GCS also allows '_', and dotted names of up to 222 characters.
BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")
INSTALL_HINT = "install it with `pip install 'parallel-ml[storage]'`"


class StorageError(Exception):
    """A location that cannot be used as it is; the message is one line that names the fix."""


class StorageUnavailable(StorageError):
    """The service did not answer properly (network down, 5xx, throttled): worth trying again."""


@dataclass(frozen=True)
class Location:
    """A parsed location. For a local one, `prefix` is the folder and `bucket` is empty."""

    scheme: str  # "gs", "s3", or "" for a local folder
    bucket: str
    prefix: str  # no leading or trailing '/'

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    def __str__(self) -> str:
        if not self.remote:
            return self.prefix
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, relative: str) -> str:
        """The object name of `relative` (a '/'-separated path below this location)."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def relative(self, key: str) -> str:
        """The path below this location of the object named `key` (the inverse of `key`)."""
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def list_prefix(self, under: str) -> str | None:
        """The object-name prefix that lists everything below `under` (None: the whole bucket)."""
        base = self.key(under).rstrip("/")
        return base + "/" if base else None


def is_remote(uri: str) -> bool:
    return "://" in uri


def parse(uri: str) -> Location:
    """Parse a location; raise StorageError with one line saying what is wrong with it."""
    if not is_remote(uri):
        if not uri.strip():
            raise StorageError("empty path; give a folder, gs://BUCKET/PATH or s3://BUCKET/PATH")
        return Location("", "", uri)
    if not uri.isprintable():  # a pasted newline, a tab: the message would not be one line
        raise StorageError(f"{uri!r}: the location has a control character such as a newline; remove it")
    scheme, _, rest = uri.partition("://")
    if scheme not in SCHEMES:
        raise StorageError(
            f"{uri}: unknown scheme {scheme}://; use gs://BUCKET/PATH, s3://BUCKET/PATH or a local folder"
        )
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket; write {scheme}://BUCKET/PATH")
    if not BUCKET.match(bucket) or ".." in bucket:
        raise StorageError(f"{uri}: {bucket!r} is not a bucket name; use 3-63 lowercase letters, digits, '-' and '.'")
    prefix = prefix.strip("/")
    if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
        raise StorageError(f"{uri}: the path has an empty, '.' or '..' part; write it as a/b/c")
    return Location(scheme, bucket, prefix)


def absolute(uri: str) -> str:
    """A local path made absolute (tasks may run elsewhere); a remote location as it is."""
    return uri if is_remote(uri) else str(pathlib.Path(uri).resolve())


@dataclass(frozen=True)
class Entry:
    """One stored file: its path relative to the location, size and a version tag."""

    name: str
    size: int
    version: str  # changes whenever the content does (ETag, generation or mtime)


class Store:
    """The operations the trainer and the CLI need; names are relative to the location.

    Reads (get_file, get_bytes, get_versioned, list) ride out a brief outage: a service that does
    not answer, or answers 5xx or "slow down", is asked again with backoff for `patience` seconds,
    as the startup write check does, before StorageUnavailable is raised. Writes are retried by
    their callers (the uploader), who know whether waiting is worth it.
    """

    location: Location
    patience = 20.0  # seconds; see PREFLIGHT_SECONDS

    def put_file(self, source: pathlib.Path, name: str) -> None:
        raise NotImplementedError

    def put_bytes(self, data: bytes, name: str) -> None:
        raise NotImplementedError

    def put_if(self, data: bytes, name: str, version: str | None) -> bool:
        """Write `data` only if the file is still at `version` (None: only if there is no such file).

        False if that precondition failed: someone else wrote (or deleted) the file meanwhile.
        `version` comes from get_versioned(). Where a service ignores the precondition, this is a
        plain write: enforces_preconditions() finds that out.
        """
        raise NotImplementedError

    def delete_if(self, name: str, version: str) -> bool:
        """Delete a file only if it is still at `version` (an Entry's version); False if it is not."""
        raise NotImplementedError

    def get_file(self, name: str, target: pathlib.Path, progress: Callable[[int], None] | None = None) -> bool:
        """Download into `target` (replaced whole, never half-written); False if there is no such file."""
        return self.patiently(lambda: self._get_file(name, target, progress))

    def get_bytes(self, name: str) -> bytes | None:
        return self.patiently(lambda: self._get_bytes(name))

    def get_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        """The content and the version (generation or ETag) of a file, for put_if; (None, None) if absent."""
        return self.patiently(lambda: self._get_versioned(name))

    def list(self, under: str = "") -> list[Entry]:
        """Every file below `under` (recursively), sorted by name."""
        return self.patiently(lambda: self._list(under))

    def delete(self, name: str) -> None:
        """Remove a file; a file that is already gone is not an error."""
        raise NotImplementedError

    def abort_unfinished_uploads(self, under: str = "") -> int:
        """Abort uploads below `under` that a killed writer left unfinished; how many there were."""
        return 0

    def check_writable(self) -> None:
        """Fail with one line now, before training, if this location cannot be written."""
        probe = ".pml-write-check"
        self.put_bytes(b"ok", probe)
        self.delete(probe)

    # How put_if's preconditions are spelled on the wire, for messages; and a version no object
    # of this service ever has.
    CREATE_ONLY, AT_VERSION, NEVER_A_VERSION = "create only", "at a version", "0"

    def where(self) -> str:
        """The location, and the service it goes to where that is not implied."""
        return str(self.location)

    def enforces_preconditions(self) -> str | None:
        """None if this service refuses a put_if whose precondition fails; else why not, in a few words.

        Tried on scratch files under the location, named per call so that two chiefs probing at
        once cannot mislead each other: a create-only write over a file, a write at a version the
        file does not have, and one at a version to a file that does not exist (MinIO took those
        before minio/minio#21550, September 2025). Then the writes that must be taken: one at the
        file's own version, and a create-only one of a new file. A service that refuses those (one
        that compares ETags in another form than it hands them out) could never write the pointer:
        StorageError, which no --single-writer overrides. An ambiguous answer (a 5xx, no answer) is
        asked again, as reads are (`patiently`), and then raises StorageUnavailable: no verdict
        either way. Asking again is safe: the probe begins with a plain write, which undoes whatever
        a write whose reply was lost did, and creates a new file under a new name each time. A
        scratch file that cannot be deleted is only a warning.
        """
        probe = f"{PRECONDITION_PROBE}-{secrets.token_hex(4)}"
        absent = f"{probe}-absent"
        scratch = [probe, absent]

        def refuses(what: str) -> StorageError:
            return StorageError(
                f"{self.where()} refused {what}, which it should take: the checkpoint pointer could never be "
                "written there (its conditional writes compare versions in another form than it hands them out, "
                "such as ETags with or without quotes); use another store, or another endpoint of it"
            )

        def verdict() -> str | None:
            self.put_bytes(b"1", probe)
            if self.put_if(b"2", probe, None):
                return f"it took a create-only write ({self.CREATE_ONLY}) over an existing file"
            if self.put_if(b"3", probe, self.NEVER_A_VERSION):
                return f"it took a write at a version the file does not have ({self.AT_VERSION})"
            if self.get_bytes(probe) != b"1":
                return "a write it refused changed the file"
            if self.put_if(b"4", absent, self.NEVER_A_VERSION):
                return f"it took a write at a version ({self.AT_VERSION}) to a file that does not exist"
            # A refusal of these may be a retry of a write whose reply was lost, refused against itself.
            _, version = self.get_versioned(probe)
            if not self.put_if(b"5", probe, version) and self.get_bytes(probe) != b"5":
                raise refuses(f"a write at the file's own version ({self.AT_VERSION} {version})")
            scratch.append(new := f"{probe}-new-{len(scratch) - 1}")
            if not self.put_if(b"6", new, None) and self.get_bytes(new) != b"6":
                raise refuses(f"a create-only write ({self.CREATE_ONLY}) of a new file")
            return None

        try:
            found = self.patiently(verdict)
        except StorageUnavailable:
            self._delete_scratch(scratch, patient=False)  # the outage outlasted the probe's patience already
            raise
        except StorageError:
            self._delete_scratch(scratch, patient=True)
            raise
        self._delete_scratch(scratch, patient=True)
        return found

    def _delete_scratch(self, names: builtins.list[str], patient: bool) -> None:
        """Delete the probe's scratch files; one that cannot be is only a warning."""
        for name in names:
            try:
                if patient:
                    self.patiently(lambda: self.delete(name))  # noqa: B023 (called at once)
                else:
                    self.delete(name)
            except StorageUnavailable as err:
                log.warning(f"could not delete {self.location.key(name)}, a scratch file of the probe ({err})")

    def _get_file(self, name: str, target: pathlib.Path, progress: Callable[[int], None] | None) -> bool:
        raise NotImplementedError

    def _get_bytes(self, name: str) -> bytes | None:
        raise NotImplementedError

    def _get_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        raise NotImplementedError

    def _list(self, under: str) -> builtins.list[Entry]:  # `list` is the method here
        raise NotImplementedError

    def patiently(self, read: Callable[[], T]) -> T:
        """`read()`, tried again with backoff while the service is unavailable, for `patience` seconds
        (at once in a thread that retries its own way). A write may go through it too when trying it
        again is safe: a conditional one, whose caller checks first whether it took effect."""
        patience = 0.0 if getattr(_impatient, "on", False) else self.patience
        deadline, delay = time.monotonic() + patience, 1.0
        while True:
            try:
                return read()
            except StorageUnavailable as err:
                left = deadline - time.monotonic()
                if left <= 0:
                    if patience <= 0:
                        raise
                    raise StorageUnavailable(f"{err}, for {patience:.0f}s") from None
                pause = min(delay, left)
                log.warning(f"{err}; trying again in {pause:.0f}s")
                time.sleep(pause)
                delay = min(delay * 2, 8.0)


_impatient = threading.local()


def fail_fast_in_this_thread() -> None:
    """Reads in the calling thread raise StorageUnavailable at once: it retries them its own way
    (the uploader, which warns and keeps count of what waits)."""
    _impatient.on = True


def open_store(uri: str, s3_endpoint: str | None = None) -> Store:
    """The store of a location. Backends are imported here, so a cloud client loads only when
    a location of its kind is opened (the CLI starts without them)."""
    location = parse(uri)
    if location.scheme == "gs":
        from pml_trainer.storage.gcs import GCSStore

        return GCSStore(location)
    if location.scheme == "s3":
        from pml_trainer.storage.s3 import S3Store

        return S3Store(location, s3_endpoint)
    from pml_trainer.storage.local import LocalStore

    return LocalStore(location)


PREFLIGHT_SECONDS = 20.0  # a service that is still starting gets this long to answer


def preflight(uri: str, s3_endpoint: str | None) -> None:
    """Check, before training starts, that `uri` can be written; raise StorageError if not."""
    store = open_store(uri, s3_endpoint)
    deadline = time.monotonic() + PREFLIGHT_SECONDS
    while True:
        try:
            store.check_writable()
            return
        except StorageUnavailable as err:
            if time.monotonic() > deadline:
                raise StorageError(f"{err}; is the service up, and is the endpoint right?") from None
            time.sleep(2.0)
