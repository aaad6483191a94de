"""Storage servers for the tests, started on 127.0.0.1 and stopped afterwards.

`gcp-storage-emulator` stands in for GCS and moto's server for S3. Each `Server` knows the
environment a client or a trainer task needs to reach it, and can be stopped and started again
on the same port (an outage). moto keeps its objects in memory only, so its restart puts back
what it held, as a persistent S3 service would; the emulator keeps them on disk by itself.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

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
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.server_env()}, start_new_session=True,
                                     preexec_fn=lambda: os.nice(self.niceness))
        deadline = time.monotonic() + 30
        while not _accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.command()[0]} did not start: {(self.workdir / 'server.log').read_text()[-2000:]}")
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
    scheme = "gs"

    def command(self) -> list[str]:
        # On disk (in workdir), so that a restart keeps the objects.
        return [str(BIN / "gcp-storage-emulator"), "start", "-H", "127.0.0.1", "--port", str(self.port), "-q"]

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url}

    def make_bucket(self, name: str) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="test", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": self.url})
        client.create_bucket(name)


class S3Server(Server):
    scheme = "s3"

    def __init__(self, workdir: pathlib.Path, check_credentials: bool = False):
        super().__init__(workdir)
        self.check_credentials = check_credentials
        self._kept: dict[str, dict[str, bytes]] = {}  # bucket -> object name -> content

    def command(self) -> list[str]:
        return [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]

    def server_env(self) -> dict[str, str]:
        # moto accepts any key unless told to check them; then it knows none of ours.
        return {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if self.check_credentials else {}

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def client(self):
        from minio import Minio

        return Minio(f"127.0.0.1:{self.port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                     secure=False, region="us-east-1")

    def make_bucket(self, name: str) -> None:
        self.client().make_bucket(name)

    def stop(self) -> None:
        try:
            # A server that knows no key holds nothing to keep.
            if not self.check_credentials and self.proc and self.proc.poll() is None:
                client = self.client()
                self._kept = {b.name: {o.object_name: client.get_object(b.name, o.object_name).read()
                                       for o in client.list_objects(b.name, recursive=True)}
                              for b in client.list_buckets()}
        finally:
            super().stop()

    def start(self) -> None:
        import io

        super().start()
        client = self.client()
        for bucket, objects in self._kept.items():
            client.make_bucket(bucket)
            for name, data in objects.items():
                client.put_object(bucket, name, io.BytesIO(data), len(data))


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
        return ["radosgw", "-f", "-c", self.conf, "-n", "client.rgw.a",
                "--rgw-frontends", f"beast endpoint=127.0.0.1:{self.port}"]

    def server_env(self) -> dict[str, str]:
        return {}

    def env(self) -> dict[str, str]:
        return {**super().env(), "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}

    def client(self):
        from minio import Minio

        return Minio(f"127.0.0.1:{self.port}", access_key=os.environ["AWS_ACCESS_KEY_ID"],
                     secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], secure=False, region="us-east-1")

    def stop(self) -> None:
        Server.stop(self)

    def start(self) -> None:
        Server.start(self)


SERVERS = {"gs": GCSServer, "s3": S3Server, "ceph": CephServer}


@dataclass
class Remote:
    """A fresh bucket on a running server, and the model dir a test uses in it."""

    server: Server
    bucket: str

    def uri(self, path: str = "model") -> str:
        return self.server.uri(self.bucket, path)

    def store(self, path: str = "model"):
        from trainer.storage import open_store

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
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PML_STAGING_DIR", str(tmp_path / "staging"))
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    bucket = f"pml-{secrets.token_hex(4)}"
    server.make_bucket(bucket)
    return Remote(server, bucket)
