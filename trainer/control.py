"""The chief's job-state endpoint, and the watch that servers keep on it.

A TensorFlow server has no idea when training is over, which is why parameter servers under
TFJob run until someone deletes them. Our chief serves its state over plain HTTP on the port after
its TensorFlow port; servers and the evaluator poll it and exit by themselves once it says "done".
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from trainer.report import say

TRAINING, DONE, FAILED = "training", "done", "failed"


class StateServer:
    """Serves {"state": ..., "step": ...} at GET /; remembers which tasks have seen the end."""

    def __init__(self, port: int, expected_peers: set[str]):
        self.state = TRAINING
        self.step = 0
        self._expected = set(expected_peers)
        self._told: set[str] = set()
        self._told_all = threading.Event()
        if not self._expected:
            self._told_all.set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                body = json.dumps({"state": owner.state, "step": owner.step}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    return  # the poller gave up waiting (the chief was busy); it asks again
                # Only a peer's acknowledgement counts: an answer written here may still be lost
                # on a poller that timed out, which would then wait for a chief that has left.
                if owner.state != TRAINING and "seen" in query:
                    owner._told.update(query.get("task", []))
                    if owner._expected <= owner._told:
                        owner._told_all.set()

            def log_message(self, *args):  # keep the training log readable
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._http = ThreadingHTTPServer(("", port), Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def finish(self, state: str, linger: float) -> None:
        """Publish the final state and wait (at most `linger` s) until every peer has seen it."""
        self.state = state
        self._told_all.wait(timeout=linger)
        self._http.shutdown()


def fetch_state(host: str, port: int, task: str, timeout: float = 5.0, seen: bool = False) -> dict | None:
    """The chief's state, or None when it cannot be reached; `seen` acknowledges the end."""
    query = urllib.parse.urlencode({"task": task, **({"seen": "1"} if seen else {})})
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/?{query}", timeout=timeout) as reply:
            return json.load(reply)
    except (OSError, urllib.error.URLError, ValueError):
        return None


def wait_for_end(host: str, port: int, task: str, orphan_timeout: float,
                 on_poll=lambda: None, interval: float = 1.0) -> str:
    """Block until the chief says the job is over; return its final state.

    A chief that has not come up yet is waited for. A chief that was seen and then vanished may be
    restarting from a checkpoint, so that too is waited for, up to `orphan_timeout` seconds.
    `on_poll` runs once per poll (the evaluator uses it to evaluate new checkpoints).
    """
    seen, gone_since = False, None
    while True:
        reply = fetch_state(host, port, task)
        if reply is not None:
            seen, gone_since = True, None
            if reply.get("state") in (DONE, FAILED):
                fetch_state(host, port, task, seen=True)  # lets the chief leave before its linger ends
                return reply["state"]
        elif seen:
            if gone_since is None:
                gone_since = time.monotonic()
                say(f"{task}: the chief at {host}:{port} stopped answering; waiting up to "
                    f"{orphan_timeout:.0f}s for it to come back")
            if time.monotonic() - gone_since > orphan_timeout:
                return FAILED
        on_poll()
        time.sleep(interval)
