"""Storage servers for the tests, started on 127.0.0.1 and stopped afterwards.

`gcp-storage-emulator` stands in for GCS, with GCS's preconditions added (gcs_with_preconditions.py),
and moto's server for S3. Each `Server` knows the environment a client or a trainer task needs to
reach it, and can be stopped and started again on the same port (an outage). moto keeps its
objects in memory only, so its restart puts back what it held before it opens its port
(moto_with_state.py), as a persistent S3 service would; the emulator keeps them on disk by itself.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import pathlib
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

BIN = pathlib.Path(sys.executable).parent
ACCESS_KEY, SECRET_KEY = "pml-test-key", "pml-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Server:
    scheme = ""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.niceness = 0  # a benchmark lowers it: the server stands in for another machine

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.server_env()},
            start_new_session=True,
            preexec_fn=lambda: os.nice(self.niceness),
        )
        deadline = time.monotonic() + 30
        while not _accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.command()[0]} did not start: {(self.workdir / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.05)

    def server_env(self) -> dict[str, str]:
        return {}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        while _accepts(self.port):  # the port is free again before anyone restarts on it
            time.sleep(0.05)

    def make_bucket(self, name: str) -> None:
        raise NotImplementedError

    def uri(self, bucket: str, path: str) -> str:
        return f"{self.scheme}://{bucket}/{path}"


class GCSServer(Server):
    """gcp-storage-emulator. `enforce`: with GCS's request preconditions (gcs_with_preconditions.py);
    without, the emulator as it is, which ignores them."""

    scheme = "gs"

    def __init__(self, workdir: pathlib.Path, enforce: bool = True):
        super().__init__(workdir)
        self.enforce = enforce

    def command(self) -> list[str]:
        # On disk (in workdir), so that a restart keeps the objects.
        args = ["start", "-H", "127.0.0.1", "--port", str(self.port), "-q"]
        if self.enforce:
            return [sys.executable, str(pathlib.Path(__file__).with_name("gcs_with_preconditions.py")), *args]
        return [str(BIN / "gcp-storage-emulator"), *args]

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url}

    def make_bucket(self, name: str) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.url}
        )
        client.create_bucket(name)


class S3Server(Server):
    scheme = "s3"

    def __init__(self, workdir: pathlib.Path, check_credentials: bool = False):
        super().__init__(workdir)
        self.check_credentials = check_credentials

    @property
    def state(self) -> pathlib.Path:
        return self.workdir / "objects.pickle"  # what the server held when it was stopped

    def command(self) -> list[str]:
        return [
            sys.executable,
            str(pathlib.Path(__file__).with_name("moto_with_state.py")),
            str(self.state),
            "127.0.0.1",
            str(self.port),
        ]

    def server_env(self) -> dict[str, str]:
        # moto accepts any key unless told to check them; then it knows none of ours.
        return {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if self.check_credentials else {}

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def client(self):
        from minio import Minio

        return Minio(
            f"127.0.0.1:{self.port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1"
        )

    def make_bucket(self, name: str) -> None:
        self.client().make_bucket(name)

    def stop(self) -> None:
        # SIGTERM: the server saves every write it acknowledged, then exits (moto_with_state.py).
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        super().stop()


class CephServer(S3Server):
    """The RADOS Gateway of the cluster that tests/ceph/cluster.sh started (`make test-ceph`).

    Objects live in the OSD, so stopping and starting the gateway keeps them.
    """

    def __init__(self, workdir: pathlib.Path):
        super().__init__(workdir)
        self.conf = os.environ.get("PML_CEPH_CONF")
        if not self.conf:
            raise RuntimeError("no Ceph cluster: run the ceph tier with `make test-ceph`")

    def command(self) -> list[str]:
        return [
            "radosgw",
            "-f",
            "-c",
            self.conf,
            "-n",
            "client.rgw.a",
            "--rgw-frontends",
            f"beast endpoint=127.0.0.1:{self.port}",
        ]

    def server_env(self) -> dict[str, str]:
        return {}

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        }

    def client(self):
        from minio import Minio

        return Minio(
            f"127.0.0.1:{self.port}",
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            secure=False,
            region="us-east-1",
        )

    def stop(self) -> None:
        Server.stop(self)

    def start(self) -> None:
        Server.start(self)


SERVERS = {"gs": GCSServer, "s3": S3Server, "ceph": CephServer}


@dataclass
class Fault:
    """Requests to answer with an error instead of passing them on: `method` and a regular
    expression searched in the URL's path and query (unquoted), at most `times` of them, once
    `when()` holds. `committed`: the request reaches the server first, and its reply is replaced.
    Status 0 answers nothing: the connection closes, as when a reply is lost."""

    method: str
    pattern: str
    times: float
    status: int = 503
    code: str = "SlowDown"
    committed: bool = False
    when: Callable[[], bool] | None = None
    hits: int = 0


@dataclass
class FaultProxy:
    """An HTTP proxy in front of a storage server that answers chosen requests with an error (a 503
    SlowDown, a 403 AccessDenied), as the service itself would, and passes the rest on unchanged,
    headers and all, so that S3 signatures still hold. Tasks reach it through `env()`."""

    server: Server
    port: int = field(default_factory=free_port)
    faults: list[Fault] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status) of every request

    def __post_init__(self):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # A reply's headers and body go out in two writes; with Nagle's algorithm the body
                # waits for the client's delayed ACK, 40 ms on Linux, on every small reply.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except (ConnectionError, TimeoutError):
                    self.close_connection = True

            def _any(self):
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _any

        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {k: v.replace(self.server.url, self.url) for k, v in self.server.env().items()}

    def fail(
        self,
        method: str,
        pattern: str,
        times: float = float("inf"),
        status: int = 503,
        code: str = "SlowDown",
        committed: bool = False,
        when: Callable[[], bool] | None = None,
    ) -> Fault:
        fault = Fault(method, pattern, times, status, code, committed, when)
        with self._lock:
            self.faults.append(fault)
        return fault

    def heal(self) -> None:
        with self._lock:
            self.faults.clear()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        """Answer one request: with the error of a matching fault (after the server carried it out, for
        a `committed` one), else with the server's reply."""
        body = self._body(handler)
        fault = self._fault(handler.command, urllib.parse.unquote(handler.path))
        if fault is None or fault.committed:
            reply = self._forward(handler.command, handler.path, dict(handler.headers), body)
        if fault is not None:
            reply = self._error(fault)
        self._reply(handler, *reply)

    @staticmethod
    def _body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else b""

    def _reply(
        self, handler: http.server.BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], data: bytes
    ) -> None:
        with self._lock:
            self.seen.append((handler.command, urllib.parse.unquote(handler.path), status))
        if status == 0:
            handler.close_connection = True
            return
        handler.send_response_only(status)
        for name, value in headers:
            if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def _fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if (
                    fault.method == method
                    and fault.hits < fault.times
                    and re.search(fault.pattern, path)
                    and (fault.when is None or fault.when())
                ):
                    fault.hits += 1
                    return fault
        return None

    def _error(self, fault: Fault) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.server.scheme == "gs":  # the JSON API's error document
            body = json.dumps(
                {
                    "error": {
                        "code": fault.status,
                        "message": fault.code,
                        "errors": [{"reason": fault.code, "message": fault.code}],
                    }
                }
            ).encode()
            return fault.status, [("Content-Type", "application/json")], body
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
            f"<Message>{fault.code}</Message><RequestId>fault</RequestId></Error>"
        ).encode()
        return fault.status, [("Content-Type", "application/xml")], body

    def _forward(self, method: str, path: str, headers: dict, body: bytes):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=120)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            reply = connection.getresponse()
            return reply.status, reply.getheaders(), reply.read()
        finally:
            connection.close()


class PreconditionDroppingProxy(FaultProxy):
    """A proxy that takes the preconditions off every request (GCS's if*Match parameters, S3's If-Match
    and If-None-Match headers): a service behind it takes every conditional write as a plain one."""

    GCS_PARAMS = ("ifGenerationMatch", "ifGenerationNotMatch", "ifMetagenerationMatch", "ifMetagenerationNotMatch")
    S3_HEADERS = ("if-match", "if-none-match")

    def _forward(self, method: str, path: str, headers: dict, body: bytes):
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        if any(name in self.GCS_PARAMS for name, _ in query):
            kept = urllib.parse.urlencode([(k, v) for k, v in query if k not in self.GCS_PARAMS])
            path = urllib.parse.urlunsplit(("", "", url.path, kept, ""))
        headers = {k: v for k, v in headers.items() if k.lower() not in self.S3_HEADERS}
        return super()._forward(method, path, headers, body)


@contextlib.contextmanager
def in_front(proxy: FaultProxy, monkeypatch):
    """Stores and tasks started from here on reach the server through `proxy`, closed at the end."""
    for key, value in proxy.env().items():
        monkeypatch.setenv(key, value)
    try:
        yield proxy
    finally:
        proxy.close()


@dataclass
class Remote:
    """A fresh bucket on a running server, and the model dir a test uses in it."""

    server: Server
    bucket: str

    def uri(self, path: str = "model") -> str:
        return self.server.uri(self.bucket, path)

    def store(self, path: str = "model"):
        from pml_trainer.storage import open_store

        return open_store(self.uri(path))


@pytest.fixture(scope="module", params=["gs", "s3", pytest.param("ceph", marks=pytest.mark.ceph)])
def server(request, tmp_path_factory):
    srv = SERVERS[request.param](tmp_path_factory.mktemp(f"{request.param}-server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def remote(server, monkeypatch, tmp_path) -> Remote:
    """Clients and trainer tasks of this test reach `server`; staging goes below tmp_path."""
    monkeypatch.setenv("PML_STAGING_DIR", str(tmp_path / "staging"))
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    return a_bucket(server, monkeypatch)


def a_bucket(server: Server, monkeypatch) -> Remote:
    """A fresh bucket on `server`, which clients and tasks started from here on reach."""
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    bucket = f"pml-{secrets.token_hex(4)}"
    server.make_bucket(bucket)
    return Remote(server, bucket)
