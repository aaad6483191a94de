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
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

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
    """The operations the trainer and the CLI need; names are relative to the location."""

    location: Location

    def put_file(self, source: pathlib.Path, name: str) -> None:
        raise NotImplementedError

    def put_bytes(self, data: bytes, name: str) -> None:
        raise NotImplementedError

    def get_file(self, name: str, target: pathlib.Path, progress: Callable[[int], None] | None = None) -> bool:
        """Download into `target` (replaced whole, never half-written); False if there is no such file."""
        raise NotImplementedError

    def get_bytes(self, name: str) -> bytes | None:
        raise NotImplementedError

    def list(self, under: str = "") -> list[Entry]:
        """Every file below `under` (recursively), sorted by name."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Remove a file; a file that is already gone is not an error."""
        raise NotImplementedError

    def check_writable(self) -> None:
        """Fail with one line now, before training, if this location cannot be written."""
        probe = ".pml-write-check"
        self.put_bytes(b"ok", probe)
        self.delete(probe)


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
        os.replace(partial, self.root / name)

    def put_bytes(self, data: bytes, name: str) -> None:
        partial = _partial(self.root / name)
        partial.write_bytes(data)
        os.replace(partial, self.root / name)

    def get_file(self, name, target, progress=None) -> bool:
        if not (self.root / name).is_file():
            return False
        partial = _partial(target)
        shutil.copyfile(self.root / name, partial)
        os.replace(partial, target)
        if progress:
            progress(target.stat().st_size)
        return True

    def get_bytes(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def list(self, under: str = "") -> list[Entry]:
        top = self.root / under
        if not top.is_dir():
            return []
        entries = []
        for path in top.rglob("*"):
            if path.is_file() and not path.name.endswith(".part"):
                stat = path.stat()
                entries.append(Entry(path.relative_to(self.root).as_posix(), stat.st_size, str(stat.st_mtime_ns)))
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
        os.replace(partial, target)
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

    def get_file(self, name, target, progress=None) -> bool:
        blob = self.bucket.blob(self.location.key(name))
        with self._errors("read from"):
            try:
                _download(target, lambda out: blob.download_to_file(out, retry=None, timeout=self.TIMEOUT), progress)
            except self._api.NotFound:  # the object: a missing bucket shows in list() and writes
                return False
        return True

    def get_bytes(self, name: str) -> bytes | None:
        with self._errors("read from"):
            try:
                return self.bucket.blob(self.location.key(name)).download_as_bytes(retry=None, timeout=self.TIMEOUT)
            except self._api.NotFound:
                return None

    def list(self, under: str = "") -> list[Entry]:
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
        with self._errors("write to"):
            self.client.fput_object(self.location.bucket, self.location.key(name), str(source))

    def put_bytes(self, data: bytes, name: str) -> None:
        import io

        with self._errors("write to"):
            self.client.put_object(self.location.bucket, self.location.key(name), io.BytesIO(data), len(data))

    def get_file(self, name, target, progress=None) -> bool:
        copy = lambda reply: _download(target, lambda out: shutil.copyfileobj(reply, out, CHUNK), progress)  # noqa: E731
        return self._read(name, copy) is not None

    def get_bytes(self, name: str) -> bytes | None:
        return self._read(name, lambda reply: reply.read())

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

    def list(self, under: str = "") -> list[Entry]:
        with self._errors("list"):
            objects = self.client.list_objects(self.location.bucket, prefix=self.location.list_prefix(under),
                                               recursive=True)
            entries = (Entry(self.location.relative(o.object_name), o.size or 0, o.etag or "") for o in objects)
            return sorted(entries, key=lambda e: e.name)

    def delete(self, name: str) -> None:
        with self._errors("delete from"):
            self.client.remove_object(self.location.bucket, self.location.key(name))


# What a network error boils down to, where urllib3 and requests wrap it in a paragraph.
NETWORK_REASONS = ("Connection refused", "Connection reset", "timed out", "Name or service not known",
                   "Temporary failure in name resolution", "No route to host")


def _reason(err: BaseException) -> str:
    text = str(err)
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
