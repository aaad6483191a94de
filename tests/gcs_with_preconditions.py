"""gcp-storage-emulator with the request preconditions of GCS, which the emulator itself ignores.

Measured on gcp-storage-emulator 2026.7.19: an upload with ifGenerationMatch=0 over an object, an
upload and a delete at a wrong generation, and ifGenerationNotMatch at the object's own generation
all succeed, and its handlers never read these parameters. Its media downloads carry no
X-Goog-Generation either. So this process runs the emulator with its handlers wrapped:

- ifGenerationMatch (0: no live object may exist), ifGenerationNotMatch, ifMetagenerationMatch
  and ifMetagenerationNotMatch are checked, as GCS does (cloud.google.com/storage/docs/
  request-preconditions; the parameters of /storage/docs/json_api/v1/objects/insert, /delete,
  /get and /patch), on every object write (media, multipart and resumable uploads, copies,
  rewrites and composes: their destination), on DELETE, on GET (metadata and media) and PATCH.
  A failed *Match is 412 with GCS's error document (reason "conditionNotMet"); a failed *NotMatch
  is 304, as the request-preconditions table says. A NotMatch condition on an object that does
  not exist fails (objects/insert: "If no live object exists, the precondition fails").
- A resumable upload is checked when it completes, against the conditions of the request that
  started it: GCS takes them with the session (seen in googleapis/google-cloud-java#201, where
  the session start passed and the upload failed).
- Media downloads name the generation they sent in X-Goog-Generation and X-Goog-Metageneration,
  as GCS does, and as google-cloud-storage reads them (Blob._extract_headers_from_download).

The emulator serves one request at a time (http.server.HTTPServer); every handler also runs under
one lock, so that a check and the write it guards stay one step should it ever serve in threads.

    python gcs_with_preconditions.py start -H HOST --port PORT [-q]   (the emulator's own arguments)
"""

from __future__ import annotations

import functools
import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator import __main__ as emulator
from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.storage import Storage

MATCH = ("ifGenerationMatch", "ifMetagenerationMatch")
NOT_MATCH = ("ifGenerationNotMatch", "ifMetagenerationNotMatch")
# What GCS answers for a failed ifGenerationMatch (the message is the service's own wording).
MESSAGE = "At least one of the pre-conditions you specified did not hold."

_lock = threading.RLock()
_request = threading.local()  # .conditions: those of the request being handled
_sessions: dict[str, dict[str, int]] = {}  # resumable upload id -> the conditions it was started with


class ConditionNotMet(Exception):
    def __init__(self, status: HTTPStatus):
        super().__init__(status.phrase)
        self.status = status


def conditions(query: dict[str, list[str]]) -> dict[str, int]:
    return {name: int(query[name][0]) for name in MATCH + NOT_MATCH if name in query}


def check(given: dict[str, int], obj: dict | None) -> None:
    """Raise ConditionNotMet unless the live object `obj` (None: there is none) meets `given`."""
    current = {
        "ifGenerationMatch": int(obj["generation"]) if obj else 0,
        "ifMetagenerationMatch": int(obj["metageneration"]) if obj else None,
    }
    for name in MATCH:
        if name in given and given[name] != current[name]:
            raise ConditionNotMet(HTTPStatus.PRECONDITION_FAILED)
    for name, match in zip(NOT_MATCH, MATCH, strict=True):
        if name in given and obj is None:
            raise ConditionNotMet(HTTPStatus.PRECONDITION_FAILED)
        if name in given and given[name] == current[match]:
            raise ConditionNotMet(HTTPStatus.NOT_MODIFIED)


def _live(storage: Storage, bucket: str, name: str) -> dict | None:
    return storage.objects.get(bucket, {}).get(name)


def _current() -> dict[str, int]:
    return getattr(_request, "conditions", None) or {}


def _refuse(response: server.Response, status: HTTPStatus) -> None:
    response.status = status
    if status == HTTPStatus.NOT_MODIFIED:  # no body
        response._content = ""
        return
    reason = {"domain": "global", "reason": "conditionNotMet", "message": MESSAGE}
    response.json({"error": {"code": status.value, "message": MESSAGE, "errors": [reason]}})


# --- writes: every object write and delete of the emulator goes through these two -----------------


def _create_file(original, self, bucket_name, file_name, content, file_obj, file_id=None):
    with _lock:
        given = _sessions.get(file_id, _current()) if file_id else _current()
        if bucket_name in self.buckets:  # else the emulator's own 404
            check(given, _live(self, bucket_name, file_name))
        original(self, bucket_name, file_name, content, file_obj, file_id)
        _sessions.pop(file_id, None)


def _create_resumable_upload(original, self, bucket_name, file_name, file_obj):
    with _lock:
        upload_id = original(self, bucket_name, file_name, file_obj)
        _sessions[upload_id] = _current()
        return upload_id


def _delete_file(original, self, bucket_name, file_name):
    with _lock:
        obj = _live(self, bucket_name, file_name)
        if obj is not None:  # a missing object is the emulator's own 404
            check(_current(), obj)
        original(self, bucket_name, file_name)


# --- every handler: its request's conditions, reads checked, refusals answered -------------------

READS = (objects.get, objects.download, objects.patch)


def _handler(original):
    @functools.wraps(original)
    def handle(request, response, storage, *args, **kwargs):
        with _lock:
            _request.conditions = conditions(request.query)
            try:
                obj = None
                if original in READS and request.params and "object_id" in request.params:
                    obj = _live(storage, request.params["bucket_name"], request.params["object_id"])
                    if obj is not None:
                        check(_request.conditions, obj)
                result = original(request, response, storage, *args, **kwargs)
                media = original is objects.download or request.query.get("alt") == ["media"]
                if obj is not None and media and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
                    response["X-Goog-Generation"] = obj["generation"]
                    response["X-Goog-Metageneration"] = obj["metageneration"]
                return result
            except ConditionNotMet as refused:
                _refuse(response, refused.status)
            finally:
                _request.conditions = None

    return handle


def _around(original, wrapper):
    @functools.wraps(original)
    def method(self, *args, **kwargs):
        return wrapper(original, self, *args, **kwargs)

    return method


def install() -> None:
    for name, wrapper in (
        ("create_file", _create_file),
        ("create_resumable_upload", _create_resumable_upload),
        ("delete_file", _delete_file),
    ):
        setattr(Storage, name, _around(getattr(Storage, name), wrapper))
    for _, methods in server.HANDLERS:
        for method, handler in methods.items():
            methods[method] = _handler(handler)
    # The router's fallback for uploads POSTed without the /upload prefix names it directly.
    objects.insert = _handler(objects.insert)


if __name__ == "__main__":
    install()
    emulator.main(sys.argv[1:])
