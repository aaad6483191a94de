"""SIGTERM does not cost the evaluator the rows it has not uploaded yet (issue 12, item 8).

The evaluator reaches its S3 model dir through a proxy that holds back the upload of eval.jsonl
until the test lets it go: so a row is written and queued, not yet uploaded, when SIGTERM comes.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import wait_for
from storage_servers import S3Server, free_port

from pml_trainer.tf_config import build

pytestmark = pytest.mark.slow
RUN = ["--seed", "3", "--train-examples", "1200", "--batch-size", "108", "--epochs", "1"]
STEPS = 10  # 1080 training examples in batches of 108


class HoldingProxy(ThreadingHTTPServer):
    """Forwards every request to the S3 server, but holds an upload of eval.jsonl until `release`."""

    daemon_threads = True

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.held = threading.Event()  # an upload of eval.jsonl is waiting
        self.released = threading.Event()
        super().__init__(("127.0.0.1", 0), _Forward)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self):
        proxy: HoldingProxy = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.command == "PUT" and self.path.split("?")[0].endswith("/eval.jsonl"):
            proxy.held.set()
            proxy.released.wait()
        upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
        upstream.request(
            self.command, self.path, body=body, headers=dict(self.headers.items())
        )  # Host kept: it is signed
        reply = upstream.getresponse()
        data = reply.read()
        self.send_response_only(reply.status, reply.reason)
        for key, value in reply.getheaders():
            if key.lower() not in ("transfer-encoding", "connection") and not (
                key.lower() == "content-length" and self.command != "HEAD"
            ):
                self.send_header(key, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *args):
        pass


def until(fact, proc: subprocess.Popen, log, what: str) -> None:
    """Wait for `fact`; fail with the end of `log` if `proc` ends first."""
    wait_for(lambda: fact() or proc.poll() is not None, timeout=300, what=what)
    assert fact(), f"the evaluator ended (code {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path / "s3")
    server.start()
    server.make_bucket("runs")
    yield server
    server.stop()


def test_sigterm_lets_the_evaluator_upload_its_rows_first(s3, tmp_path, monkeypatch):
    for key, value in {**s3.env(), "PML_STAGING_DIR": str(tmp_path / "staging")}.items():
        monkeypatch.setenv(key, value)
    env = dict(os.environ)
    uri = s3.uri("runs", "model")
    trained = subprocess.run(
        [sys.executable, "-m", "pml_trainer", *RUN, "--model-dir", uri],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]

    proxy = HoldingProxy(s3.port)
    # The chief is long gone: the evaluator keeps evaluating what the model dir holds.
    cluster = {"chief": [f"127.0.0.1:{free_port()}"], "evaluator": [f"127.0.0.1:{free_port()}"]}
    log = tmp_path / "evaluator.log"
    with open(log, "wb") as out:
        evaluator = subprocess.Popen(
            [sys.executable, "-m", "pml_trainer", *RUN, "--model-dir", uri],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "AWS_ENDPOINT_URL": proxy.url, "TF_CONFIG": build(cluster, "evaluator", 0)},
        )
    try:
        until(proxy.held.is_set, evaluator, log, "the evaluator's upload of eval.jsonl")
        # Said once eval.jsonl and the TensorBoard events are both queued for upload.
        until(
            lambda: re.search(rf"evaluated ckpt-(\S+-)?{STEPS}:", log.read_text()),
            evaluator,
            log,
            "the evaluator's row",
        )
        evaluator.send_signal(signal.SIGTERM)
        until(
            lambda: "SIGTERM: 2 upload(s) of eval.jsonl and its logs still pending" in log.read_text(),
            evaluator,
            log,
            "the evaluator to wait for its uploads",
        )
        proxy.released.set()
        # Stopped before any chief said done: retryable, or a TFJob would fail (issue 26, item 1).
        assert evaluator.wait(timeout=60) == 143, log.read_text()[-3000:]
    finally:
        proxy.released.set()
        evaluator.kill()
        evaluator.wait()
        proxy.shutdown()
    from pml_trainer.storage import open_store

    rows = [json.loads(line) for line in open_store(uri).get_bytes("eval.jsonl").decode().splitlines()]
    assert [row["step"] for row in rows] == [STEPS]
    assert 0 < rows[0]["test_accuracy"] <= 1
