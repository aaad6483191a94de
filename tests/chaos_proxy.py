"""A FaultProxy whose faults a seed decides: the storage proxy of issue 25.

Between a client and a test storage server (moto, the GCS test server, Ceph RGW), `ChaosProxy`
answers each request as a `Schedule` made from a seed says: passed on; delayed; 503 SlowDown (the
service's own error document); the connection reset before the request reaches the server; the
reply dropped after the server carried the request out (the write took effect, the client hears
nothing); and, for S3, a CompleteMultipartUpload answered 200 OK with an <Error> body, the request
not passed on, so the object really is not there. A client that sends the same requests meets the
same faults for the same seed.
"""

from __future__ import annotations

import collections
import http.server
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from storage_servers import Fault, FaultProxy

# The kinds of answer, in the order the schedule's draw reaches them.
KINDS = ("slowdown", "reset", "drop", "delay")


def is_multipart_completion(method: str, path: str) -> bool:
    """S3 CompleteMultipartUpload: POST /bucket/key?uploadId=ID (CreateMultipartUpload is POST ?uploads)."""
    return method == "POST" and re.search(r"[?&]uploadId=", path) is not None


# Query parameters whose values differ from run to run (ids and generations the server makes up).
VOLATILE = {"uploadId", "generation", "ifGenerationMatch", "ifGenerationNotMatch", "ifMetagenerationMatch"}


@dataclass
class Schedule:
    """What a proxy does with each request, drawn from the seed.

    `rates` gives each kind of KINDS its share of the requests (the rest pass). `completion_errors`
    is the share of S3 multipart completions answered 200 with an error. `only` limits the faults
    to requests that match one of its (method, path) pairs of regular expressions, the method matched
    whole and the path (unquoted, with its query) searched; the others pass without a draw.
    `injected` counts the faults by kind.

    Each request's draw comes from `random.Random` seeded by the seed, the request (its method, path
    and query, less what matches a `volatile` regular expression, such as a bucket's random name, and the values of VOLATILE
    parameters) and how many such requests came before: requests that a client sends from threads
    of its own (minio uploads an object's parts in parallel, google-cloud-storage fetches bucket
    metadata in the background) do not change what the others meet, so a seed replays.
    """

    seed: int | str
    rates: dict[str, float] = field(default_factory=dict)
    completion_errors: float = 0.0
    max_delay: float = 0.2  # seconds
    only: list[tuple[str, str]] | None = None
    volatile: list[str] = field(default_factory=list)
    injected: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self):
        unknown = set(self.rates) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        self._lock = threading.Lock()
        self._seen: collections.Counter = collections.Counter()

    def key(self, method: str, path: str) -> str:
        for pattern in self.volatile:
            path = re.sub(pattern, "", path)
        where, _, query = path.partition("?")
        params = sorted(
            name if name in VOLATILE else f"{name}={value}"
            for name, _, value in (p.partition("=") for p in query.split("&") if p)
        )
        return f"{method} {where}?{'&'.join(params)}"

    def decide(self, method: str, path: str, s3: bool) -> tuple[str, float]:
        """(kind, delay in seconds) for one request; kind "pass" or one of KINDS or "completion_error"."""
        if self.only is not None and not any(re.fullmatch(m, method) and re.search(p, path) for m, p in self.only):
            return "pass", 0.0
        key = self.key(method, path)
        with self._lock:
            self._seen[key] += 1
            rng = random.Random(f"{self.seed}|{key}|{self._seen[key]}")
            draw, completion, delay = rng.random(), rng.random(), rng.random() * self.max_delay
            if s3 and is_multipart_completion(method, path) and completion < self.completion_errors:
                kind = "completion_error"
            else:
                kind = "pass"
                for candidate in KINDS:
                    share = self.rates.get(candidate, 0.0)
                    if draw < share:
                        kind = candidate
                        break
                    draw -= share
            if kind != "pass":
                self.injected[kind] += 1
        return kind, delay if kind == "delay" else 0.0


# AWS: "a 200 OK response can contain either a success or an error. ... Be sure to design your
# application to parse the contents of the response and handle it appropriately"
# (docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html, "Description"); the
# error document is the one of docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html.
COMPLETION_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again."
    b"</Message><RequestId>chaos</RequestId><HostId>chaos</HostId></Error>"
)


@dataclass
class ChaosProxy(FaultProxy):
    """A FaultProxy that also answers as `schedule` says (None: only its `faults`)."""

    schedule: Schedule | None = None

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        schedule = self.schedule
        if schedule is None:
            super()._serve(handler)
            return
        body = self._body(handler)
        path = urllib.parse.unquote(handler.path)
        kind, delay = schedule.decide(handler.command, path, self.server.scheme != "gs")
        if kind == "reset":
            self._cut(handler, reset=True)
            return
        if kind == "slowdown":
            self._reply(handler, *self._error(Fault(handler.command, "", 1)))
            return
        if kind == "completion_error":
            self._reply(handler, 200, [("Content-Type", "application/xml")], COMPLETION_ERROR)
            return
        time.sleep(delay)
        fault = self._fault(handler.command, path)
        if fault is not None and not fault.committed:
            self._reply(handler, *self._error(fault))
            return
        reply = self._forward(handler.command, handler.path, dict(handler.headers), body)
        if fault is not None:
            reply = self._error(fault)
        if kind == "drop":  # the server has done it; the client never hears so
            self._cut(handler, reset=False)
            return
        self._reply(handler, *reply)

    def _cut(self, handler: http.server.BaseHTTPRequestHandler, reset: bool) -> None:
        """Close the connection without a reply: with a TCP reset (SO_LINGER 0), or a plain close."""
        with self._lock:
            self.seen.append((handler.command, urllib.parse.unquote(handler.path), 0))
        handler.close_connection = True
        if reset:
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()  # closed for good once the handler lets go of its reader
