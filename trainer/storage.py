"""Where a job's files live: a local folder, `gs://bucket/prefix` or `s3://bucket/prefix`.

One small interface for the three kinds, used by the trainer (checkpoints, outputs, datasets)
and by `pmlctl artifacts`. It stays free of TensorFlow, and the cloud clients are imported only
when a remote location is opened, so that the CLI starts fast.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, TypeVar

from trainer import durable
from trainer.log import log

T = TypeVar("T")

SCHEMES = ("gs", "s3")
# Both services' rules, loosely: GCS also allows '_', and dotted names of up to 222 characters.
BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$")
DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"
CHUNK = 1 << 20
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
        return key[len(self.prefix) + 1:] if self.prefix else key

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
        raise StorageError(f"{uri}: unknown scheme {scheme}://; use gs://BUCKET/PATH, s3://BUCKET/PATH or a local folder")
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
        `version` comes from get_versioned(). Where a service ignores the precondition (see
        GCSStore), this is a plain write, and callers must read back to find a lost race.
        """
        raise NotImplementedError

    def delete_if(self, name: str, version: str) -> bool:
        """Delete a file only if it is still at `version` (an Entry's version); False if it is not."""
        raise NotImplementedError

    def get_file(self, name: str, target: pathlib.Path, progress: Callable[[int], None] | None = None) -> bool:
        """Download into `target` (replaced whole, never half-written); False if there is no such file."""
        return self._patiently(lambda: self._get_file(name, target, progress))

    def get_bytes(self, name: str) -> bytes | None:
        return self._patiently(lambda: self._get_bytes(name))

    def get_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        """The content and the version (generation or ETag) of a file, for put_if; (None, None) if absent."""
        return self._patiently(lambda: self._get_versioned(name))

    def list(self, under: str = "") -> list[Entry]:
        """Every file below `under` (recursively), sorted by name."""
        return self._patiently(lambda: self._list(under))

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

    def _get_file(self, name: str, target: pathlib.Path, progress: Callable[[int], None] | None) -> bool:
        raise NotImplementedError

    def _get_bytes(self, name: str) -> bytes | None:
        raise NotImplementedError

    def _get_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        raise NotImplementedError

    def _list(self, under: str) -> list[Entry]:
        raise NotImplementedError

    def _patiently(self, read: Callable[[], T]) -> T:
        """`read()`, tried again with backoff while the service is unavailable, for `patience` seconds."""
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
    location = parse(uri)
    if location.scheme == "gs":
        return GCSStore(location)
    if location.scheme == "s3":
        return S3Store(location, s3_endpoint)
    return LocalStore(location)


def _partial(target: pathlib.Path) -> pathlib.Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.{os.getpid()}.part")


class LocalStore(Store):
    def __init__(self, location: Location):
        self.location = location
        self.root = pathlib.Path(location.prefix)

    def put_file(self, source: pathlib.Path, name: str) -> None:
        partial = _partial(self.root / name)
        shutil.copyfile(source, partial)
        durable.replace(partial, self.root / name)

    def put_bytes(self, data: bytes, name: str) -> None:
        partial = _partial(self.root / name)
        partial.write_bytes(data)
        durable.replace(partial, self.root / name)

    @contextmanager
    def _locked(self, name: str):
        """One conditional operation at a time on this folder: flock(2) on the folder itself."""
        import fcntl

        folder = (self.root / name).parent
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def put_if(self, data: bytes, name: str, version: str | None) -> bool:
        with self._locked(name):
            if self._get_versioned(name)[1] != version:
                return False
            self.put_bytes(data, name)
            return True

    def delete_if(self, name: str, version: str) -> bool:
        with self._locked(name):
            path = self.root / name
            if path.is_file() and self._version(path.stat()) != version:
                return False
            path.unlink(missing_ok=True)
            return True

    def _get_file(self, name, target, progress) -> bool:
        if not (self.root / name).is_file():
            return False
        partial = _partial(target)
        shutil.copyfile(self.root / name, partial)
        durable.replace(partial, target)
        if progress:
            progress(target.stat().st_size)
        return True

    def _get_bytes(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def _get_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        path = self.root / name
        try:
            with open(path, "rb") as f:
                return f.read(), self._version(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None, None

    @staticmethod
    def _version(stat: os.stat_result) -> str:
        # Every write is a rename of a new file, so a new inode; the mtime alone can repeat
        # within one clock tick of the file system (a few ms).
        return f"{stat.st_ino}.{stat.st_mtime_ns}.{stat.st_size}"

    def _list(self, under: str) -> list[Entry]:
        top = self.root / under
        if not top.is_dir():
            return []
        entries = []
        for path in top.rglob("*"):
            if path.is_file() and not path.name.endswith(".part"):
                stat = path.stat()
                entries.append(Entry(path.relative_to(self.root).as_posix(), stat.st_size, self._version(stat)))
        return sorted(entries, key=lambda e: e.name)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            super().check_writable()
        except OSError as err:
            raise StorageError(f"{self.root}: cannot write there ({err.strerror}); pick another folder") from None


class _Counting:
    """A file being downloaded into, telling `progress` of every chunk."""

    def __init__(self, out, progress):
        self.out, self.progress = out, progress

    def write(self, chunk: bytes) -> int:
        if self.progress:
            self.progress(len(chunk))
        return self.out.write(chunk)


def _download(target: pathlib.Path, fill: Callable, progress) -> pathlib.Path:
    """`fill(file)` writes the content; `target` is replaced only once it is complete."""
    partial = _partial(target)
    try:
        with open(partial, "wb") as out:
            fill(_Counting(out, progress))
        durable.replace(partial, target)
        return target
    finally:
        partial.unlink(missing_ok=True)


# --- Google Cloud Storage ----------------------------------------------------------------------

class GCSStore(Store):
    """gs:// through google-cloud-storage.

    Credentials are Google's Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS,
    `gcloud auth application-default login`, or the metadata server (GKE Workload Identity).
    With STORAGE_EMULATOR_HOST set, the client talks to that emulator, anonymously.
    Retries are ours (with a visible warning), so the client's own silent ones are turned off.
    """

    TIMEOUT = (5, 120)  # connect, read

    def __init__(self, location: Location):
        self.location = location
        try:
            from google.api_core import exceptions as api
            from google.auth import exceptions as auth
            from google.cloud import storage
            from google.cloud.storage import exceptions as transfer
            import requests
        except ImportError:
            raise StorageError(f"gs:// needs google-cloud-storage; {INSTALL_HINT}") from None
        self._api, self._auth, self._requests = api, auth, requests
        # A transfer cut off by an outage surfaces as a short or corrupt download, not a
        # connection error: it too is worth retrying.
        self._cut_off = (transfer.DataCorruption,)
        with self._errors("connect to"):
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                self.client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator"),
                                             credentials=AnonymousCredentials())
            else:
                self.client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
        self.bucket = self.client.bucket(location.bucket)

    @contextmanager
    def _errors(self, action: str):
        api, auth = self._api, self._auth
        where = f"gs://{self.location.bucket}"
        try:
            yield
        except auth.DefaultCredentialsError as err:
            raise StorageError(f"{where}: no usable Google credentials ({_first_line(err)}); set "
                               "GOOGLE_APPLICATION_CREDENTIALS to a key file or use Workload Identity") from None
        except (api.Unauthorized, api.Forbidden, auth.RefreshError) as err:
            raise StorageError(f"{where}: access denied ({_first_line(err)}); check the credentials and the "
                               "bucket's permissions") from None
        except api.NotFound:
            raise StorageError(f"{where}: no such bucket; create it or fix the location") from None
        except (api.ServerError, api.TooManyRequests, auth.TransportError, *self._cut_off,
                self._requests.exceptions.RequestException, ConnectionError) as err:
            raise StorageUnavailable(f"cannot {action} {where} ({_reason(err)})") from None

    def put_file(self, source: pathlib.Path, name: str) -> None:
        with self._errors("write to"):
            self.bucket.blob(self.location.key(name)).upload_from_filename(
                str(source), retry=None, timeout=self.TIMEOUT)

    def put_bytes(self, data: bytes, name: str) -> None:
        with self._errors("write to"):
            self.bucket.blob(self.location.key(name)).upload_from_string(data, retry=None, timeout=self.TIMEOUT)

    # Preconditions: ifGenerationMatch, with 0 meaning "no live object" (cloud.google.com/storage/docs/
    # request-preconditions and /docs/generations-preconditions; a failed one is 412). gcp-storage-emulator
    # 2026.7.19 ignores them: measured, a create-only upload over an object, an upload and a delete at a
    # wrong generation all succeed, and its handlers never read ifGenerationMatch. Against it callers
    # fall back on reading back what they wrote (see checkpoints.Writer).
    def put_if(self, data: bytes, name: str, version: str | None) -> bool:
        with self._errors("write to"):
            try:
                self.bucket.blob(self.location.key(name)).upload_from_string(
                    data, if_generation_match=int(version) if version else 0, retry=None, timeout=self.TIMEOUT)
            except self._api.PreconditionFailed:
                return False
        return True

    def delete_if(self, name: str, version: str) -> bool:
        with self._errors("delete from"):
            try:
                self.bucket.blob(self.location.key(name)).delete(
                    if_generation_match=int(version), retry=None, timeout=self.TIMEOUT)
            except self._api.NotFound:
                pass
            except self._api.PreconditionFailed:
                return False
        return True

    def _get_file(self, name, target, progress) -> bool:
        blob = self.bucket.blob(self.location.key(name))
        with self._errors("read from"):
            try:
                _download(target, lambda out: blob.download_to_file(out, retry=None, timeout=self.TIMEOUT), progress)
            except self._api.NotFound:  # the object: a missing bucket shows in list() and writes
                return False
        return True

    def _get_bytes(self, name: str) -> bytes | None:
        with self._errors("read from"):
            try:
                return self.bucket.blob(self.location.key(name)).download_as_bytes(retry=None, timeout=self.TIMEOUT)
            except self._api.NotFound:
                return None

    def _get_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        with self._errors("read from"):
            blob = self.bucket.blob(self.location.key(name))
            try:
                data = blob.download_as_bytes(retry=None, timeout=self.TIMEOUT)
            except self._api.NotFound:
                return None, None
            # GCS names the generation it sent in X-Goog-Generation, which the client keeps; the
            # emulator does not send it, and its generation is read apart (it ignores preconditions anyway).
            generation = blob.generation
            if generation is None:
                stat = self.bucket.get_blob(self.location.key(name), retry=None, timeout=self.TIMEOUT)
                generation = stat.generation if stat else None
            return data, str(generation) if generation is not None else None

    def _list(self, under: str) -> list[Entry]:
        with self._errors("list"):
            blobs = self.client.list_blobs(self.location.bucket, prefix=self.location.list_prefix(under),
                                           retry=None, timeout=self.TIMEOUT)
            entries = (Entry(self.location.relative(b.name), b.size or 0, str(b.generation)) for b in blobs)
            return sorted(entries, key=lambda e: e.name)

    def delete(self, name: str) -> None:
        with self._errors("delete from"):
            try:
                self.bucket.blob(self.location.key(name)).delete(retry=None, timeout=self.TIMEOUT)
            except self._api.NotFound:
                pass


# --- S3 (MinIO, Ceph, AWS...) ------------------------------------------------------------------

def s3_endpoint(given: str | None) -> str:
    """--s3-endpoint, else AWS_ENDPOINT_URL, else AWS itself; http:// means no TLS."""
    endpoint = given or os.environ.get("AWS_ENDPOINT_URL") or DEFAULT_S3_ENDPOINT
    check_endpoint(endpoint)
    return endpoint


def check_endpoint(endpoint: str) -> None:
    try:
        url = urllib.parse.urlsplit(endpoint)
        url.port  # raises ValueError for a port out of range
    except ValueError:  # "http://[::1": an unclosed IPv6 address
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname or url.path.strip("/"):
        raise StorageError(f"S3 endpoint {endpoint!r}: write it as http://HOST:PORT (no TLS) or https://HOST[:PORT]")


class S3Store(Store):
    """s3:// through the minio client: MinIO, Ceph RGW, AWS or any S3 service.

    Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN);
    without them requests are anonymous. The region is AWS_REGION, else us-east-1.
    """

    def __init__(self, location: Location, endpoint: str | None):
        self.location = location
        self.endpoint = s3_endpoint(endpoint)
        try:
            import urllib3
            from minio import Minio
            from minio import error as s3
        except ImportError:
            raise StorageError(f"s3:// needs the minio client; {INSTALL_HINT}") from None
        self._s3, self._urllib3 = s3, urllib3
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if bool(key) != bool(secret):
            given, missing = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")[::1 if key else -1]
            raise StorageError(f"s3://{location.bucket}: {given} is set but {missing} is not; "
                               "set both, or neither for anonymous access")
        url = urllib.parse.urlsplit(self.endpoint)
        # Few, quick retries inside the client: longer outages are retried by the caller, who says so.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=120), maxsize=4,
                                   retries=urllib3.Retry(total=2, backoff_factor=0.2,
                                                         status_forcelist=(500, 502, 503, 504)))
        self.client = Minio(url.netloc, access_key=key, secret_key=secret,
                            session_token=os.environ.get("AWS_SESSION_TOKEN"), secure=url.scheme == "https",
                            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                            http_client=http)

    @contextmanager
    def _errors(self, action: str):
        where = f"s3://{self.location.bucket} at {self.endpoint}"
        try:
            yield
        except self._s3.S3Error as err:
            if err.code == "NoSuchBucket":
                raise StorageError(f"{where}: no such bucket; create it or fix the location") from None
            if err.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                            "ExpiredToken"):
                raise StorageError(f"{where}: access denied ({err.code}); check AWS_ACCESS_KEY_ID, "
                                   "AWS_SECRET_ACCESS_KEY and the bucket's policy") from None
            raise StorageUnavailable(f"cannot {action} {where} ({err.code})") from None
        except (self._s3.ServerError, self._s3.InvalidResponseError, self._urllib3.exceptions.HTTPError,
                ConnectionError, TimeoutError) as err:
            raise StorageUnavailable(f"cannot {action} {where} ({_reason(err)})") from None

    def put_file(self, source: pathlib.Path, name: str) -> None:
        # Above 5 MiB the client uploads in parts; a failed part makes it abort the upload itself.
        # A killed process cannot: abort_unfinished_uploads() clears what it left.
        with self._errors("write to"):
            self.client.fput_object(self.location.bucket, self.location.key(name), str(source))

    def put_bytes(self, data: bytes, name: str) -> None:
        import io

        with self._errors("write to"):
            self.client.put_object(self.location.bucket, self.location.key(name), io.BytesIO(data), len(data))

    # Conditional writes: If-Match with the ETag, or If-None-Match: * to create only; a failed one
    # is 412 PreconditionFailed, or 409 ConditionalRequestConflict when another conditional write
    # to the object is under way (docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html,
    # and /API/API_PutObject.html). Measured on the servers the tests run: moto 5.2.5 honours both,
    # and If-Match on DELETE. Ceph RGW 16.2.15 honours both on PUT, but an If-Match ETag in quotes
    # (RFC 7232's form) never matches there, so the ETag goes unquoted (moto takes either); RGW
    # ignores If-Match on DELETE. minio-py has no parameter for these headers (put_object turns
    # unknown headers into x-amz-meta-*), hence its request method _put_object/_execute.
    PRECONDITION_CODES = ("PreconditionFailed", "ConditionalRequestConflict")

    def put_if(self, data: bytes, name: str, version: str | None) -> bool:
        headers = {"Content-Type": "text/plain", **({"If-Match": version} if version else {"If-None-Match": "*"})}
        with self._errors("write to"):
            try:
                self.client._put_object(self.location.bucket, self.location.key(name), data, headers=headers)
            except self._s3.S3Error as err:
                if err.code in self.PRECONDITION_CODES:
                    return False
                raise
        return True

    def delete_if(self, name: str, version: str) -> bool:
        with self._errors("delete from"):
            try:
                self.client._execute("DELETE", self.location.bucket, self.location.key(name),
                                     headers={"If-Match": version})
            except self._s3.S3Error as err:
                if err.code in self.PRECONDITION_CODES:
                    return False
                if err.code != "NoSuchKey":
                    raise
        return True

    def abort_unfinished_uploads(self, under: str = "") -> int:
        """Abort the multipart uploads below `under`: a writer killed mid-upload leaves its parts
        stored, invisible to listings, and billed until aborted (docs.aws.amazon.com/AmazonS3/latest/
        userguide/mpuoverview.html). A bucket lifecycle rule with AbortIncompleteMultipartUpload
        clears them too, for writers that never come back (see README)."""
        aborted = 0
        with self._errors("clean up unfinished uploads in"):
            while True:
                # Aborted uploads leave the listing, so each round lists from the start (minio-py
                # 7.2 drops NextUploadIdMarker, which a marker-based walk would need).
                found = self.client._list_multipart_uploads(self.location.bucket,
                                                            prefix=self.location.list_prefix(under))
                for upload in found.uploads:
                    self.client._abort_multipart_upload(self.location.bucket, upload.object_name, upload.upload_id)
                aborted += len(found.uploads)
                if not found.uploads or not found.is_truncated:
                    return aborted

    def _get_file(self, name, target, progress) -> bool:
        copy = lambda reply: _download(target, lambda out: shutil.copyfileobj(reply, out, CHUNK), progress)  # noqa: E731
        return self._read(name, copy) is not None

    def _get_bytes(self, name: str) -> bytes | None:
        return self._read(name, lambda reply: reply.read())

    def _get_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        # The ETag of the very content read: one request, so the two always match.
        found = self._read(name, lambda reply: (reply.read(), (reply.headers.get("ETag") or "").strip('"')))
        return found if found is not None else (None, None)

    def _read(self, name: str, use: Callable):
        """What `use` makes of the object's content stream; None if there is no such object."""
        with self._errors("read from"):
            try:
                reply = self.client.get_object(self.location.bucket, self.location.key(name))
            except self._s3.S3Error as err:
                if err.code == "NoSuchKey":
                    return None
                raise
            try:
                return use(reply)
            finally:
                reply.close()
                reply.release_conn()

    def _list(self, under: str) -> list[Entry]:
        with self._errors("list"):
            objects = self.client.list_objects(self.location.bucket, prefix=self.location.list_prefix(under),
                                               recursive=True)
            entries = (Entry(self.location.relative(o.object_name), o.size or 0, (o.etag or "").strip('"'))
                       for o in objects)
            return sorted(entries, key=lambda e: e.name)

    def delete(self, name: str) -> None:
        with self._errors("delete from"):
            self.client.remove_object(self.location.bucket, self.location.key(name))


# What a network error boils down to, where urllib3 and requests wrap it in a paragraph.
NETWORK_REASONS = ("Connection refused", "Connection reset", "timed out", "Name or service not known",
                   "Temporary failure in name resolution", "No route to host")


def _reason(err: BaseException) -> str:
    text = str(err)
    # urllib3 hides the error document of a reply it retried (503 SlowDown) behind this.
    replies = re.search(r"too many (\d{3}) error responses", text)
    if replies:
        return f"{replies.group(1)} replies, each time it was asked"
    # google-cloud-storage quotes the whole JSON error document; its reason says it all.
    status, reason = re.match(r"(\d{3}) ", text), re.search(r'"reason":\s*"(\w+)"', text)
    if status and reason:
        return f"{status.group(1)} {reason.group(1)}"
    return next((r.lower() for r in NETWORK_REASONS if r in text), _first_line(err))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


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
