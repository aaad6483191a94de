"""s3:// locations through the minio client (imported only when one is opened), and the S3
endpoint a job talks to."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from pml_trainer.storage import INSTALL_HINT, Entry, Location, StorageError, StorageUnavailable, Store
from pml_trainer.storage._common import Progress, download, reason

if TYPE_CHECKING:
    from minio.helpers import DictType
    from urllib3 import BaseHTTPResponse

T = TypeVar("T")
DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"
CHUNK = 1 << 20


def s3_endpoint(given: str | None) -> str:
    """--s3-endpoint, else AWS_ENDPOINT_URL, else AWS itself; http:// means no TLS."""
    endpoint = given or os.environ.get("AWS_ENDPOINT_URL") or DEFAULT_S3_ENDPOINT
    check_endpoint(endpoint)
    return endpoint


def check_endpoint(endpoint: str) -> None:
    try:
        url = urllib.parse.urlsplit(endpoint)
        _ = url.port  # raises ValueError for a port out of range
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
            given, missing = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")[:: 1 if key else -1]
            raise StorageError(
                f"s3://{location.bucket}: {given} is set but {missing} is not; "
                "set both, or neither for anonymous access"
            )
        url = urllib.parse.urlsplit(self.endpoint)
        # Few, quick retries inside the client: longer outages are retried by the caller, who says so.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=120),
            maxsize=4,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        self.client = Minio(
            url.netloc,
            access_key=key,
            secret_key=secret,
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
            secure=url.scheme == "https",
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            http_client=http,
        )

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        where = f"s3://{self.location.bucket} at {self.endpoint}"
        try:
            yield
        except self._s3.S3Error as err:
            if err.code == "NoSuchBucket":
                raise StorageError(f"{where}: no such bucket; create it or fix the location") from None
            if err.code in (
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "InvalidToken",
                "ExpiredToken",
            ):
                raise StorageError(
                    f"{where}: access denied ({err.code}); check AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY and the bucket's policy"
                ) from None
            raise StorageUnavailable(f"cannot {action} {where} ({err.code})") from None
        except (
            self._s3.ServerError,
            self._s3.InvalidResponseError,
            self._urllib3.exceptions.HTTPError,
            ConnectionError,
            TimeoutError,
        ) as err:
            raise StorageUnavailable(f"cannot {action} {where} ({reason(err)})") from None

    def put_file(self, source: pathlib.Path, name: str) -> None:
        # Above 5 MiB the client uploads in parts; a failed part makes it abort the upload itself.
        # A killed process cannot: abort_unfinished_uploads() clears what it left.
        key = self.location.key(name)
        with self._errors("write to"):
            result = self.client.fput_object(self.location.bucket, key, str(source))
            if not result.etag:
                # A completion answered 200 with an <Error> body, which minio-py 7.2 returns as a
                # result without an ETag (minio/datatypes.py, CompleteMultipartUploadResult): the
                # object is not there. Its parts are aborted now rather than billed until a claim.
                for upload in self.client._list_multipart_uploads(self.location.bucket, prefix=key).uploads:
                    if upload.object_name == key and upload.upload_id is not None:
                        self.client._abort_multipart_upload(self.location.bucket, key, upload.upload_id)
                raise StorageUnavailable(
                    f"cannot write to s3://{self.location.bucket}/{key}: the upload did not complete"
                )

    def put_bytes(self, data: bytes, name: str) -> None:
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
    CREATE_ONLY, AT_VERSION, NEVER_A_VERSION = "If-None-Match: *", "If-Match", "0" * 32

    def where(self) -> str:
        return f"{self.location} at {self.endpoint}"

    def put_if(self, data: bytes, name: str, version: str | None) -> bool:
        condition = {"If-Match": version} if version else {"If-None-Match": "*"}
        headers: DictType = {"Content-Type": "text/plain", **condition}
        with self._errors("write to"):
            try:
                self.client._put_object(self.location.bucket, self.location.key(name), data, headers=headers)
            except self._s3.S3Error as err:
                # If-Match on a key that does not exist: AWS (and moto) answer 404 NoSuchKey, not 412
                # (userguide/conditional-writes.html#conditional-error-response); Ceph answers 412.
                if err.code in self.PRECONDITION_CODES or (version and err.code == "NoSuchKey"):
                    return False
                raise
        return True

    def delete_if(self, name: str, version: str) -> bool:
        with self._errors("delete from"):
            try:
                self.client._execute(
                    "DELETE", self.location.bucket, self.location.key(name), headers={"If-Match": version}
                )
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
        clears them too, for writers that never come back (see docs/storage.md). MinIO lists an
        upload only for its whole object name (minio/minio#11686, #20989), so there this finds
        nothing; its own stale-upload expiry clears them instead (docs/storage.md says how)."""
        aborted = 0
        with self._errors("clean up unfinished uploads in"):
            while True:
                # Aborted uploads leave the listing, so each round lists from the start (minio-py
                # 7.2 drops NextUploadIdMarker, which a marker-based walk would need).
                found = self.client._list_multipart_uploads(
                    self.location.bucket, prefix=self.location.list_prefix(under)
                )
                for upload in found.uploads:
                    if upload.upload_id is not None:  # ListMultipartUploads names every upload's id
                        self.client._abort_multipart_upload(self.location.bucket, upload.object_name, upload.upload_id)
                aborted += len(found.uploads)
                if not found.uploads or not found.is_truncated:
                    return aborted

    def _get_file(self, name: str, target: pathlib.Path, progress: Progress | None) -> bool:
        def copy(reply: BaseHTTPResponse) -> pathlib.Path:
            return download(target, lambda out: shutil.copyfileobj(reply, out, CHUNK), progress)

        return self._read(name, copy) is not None

    def _get_bytes(self, name: str) -> bytes | None:
        return self._read(name, lambda reply: reply.read())

    def _get_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        # The ETag of the very content read: one request, so the two always match.
        found = self._read(name, lambda reply: (reply.read(), (reply.headers.get("ETag") or "").strip('"')))
        return found if found is not None else (None, None)

    def _read(self, name: str, use: Callable[[BaseHTTPResponse], T]) -> T | None:
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
            objects = self.client.list_objects(
                self.location.bucket, prefix=self.location.list_prefix(under), recursive=True
            )
            entries = (
                Entry(self.location.relative(o.object_name), o.size or 0, (o.etag or "").strip('"')) for o in objects
            )
            return sorted(entries, key=lambda e: e.name)

    def delete(self, name: str) -> None:
        with self._errors("delete from"):
            self.client.remove_object(self.location.bucket, self.location.key(name))
