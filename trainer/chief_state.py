"""The chief's job-state endpoint, and the watch that servers keep on it.

A TensorFlow server has no idea when training is over, which is why parameter servers under
TFJob run until someone deletes them. Our chief serves its state over plain HTTP on the port after
its TensorFlow port; servers and the evaluator poll it and exit by themselves once it says "done".

Each of them acknowledges the end with a second request, and the chief waits for those
acknowledgements before it exits. Servers acknowledge at once. The evaluator acknowledges only once
the final checkpoint's evaluation is in eval.jsonl (written, and uploaded for a remote model dir):
under TFJob the job has succeeded as soon as the chief exits 0, and `cleanPodPolicy: Running` then
deletes every pod still running, an evaluator in the middle of its last evaluation included. Plain
Kubernetes Jobs and local jobs follow the same order, so the final evaluation lands in every mode.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pml_trainer import exits
from pml_trainer.log import log
from pml_trainer.tf_config import listen_host

TRAINING, DONE, FAILED = "training", "done", "failed"
# How long the chief waits for the evaluator's final evaluation (the evaluator gives up as long
# after it saw the end). It may have to start TensorFlow, restore and evaluate the last checkpoint
# on the whole test split, and upload eval.jsonl; a bound keeps a stuck evaluator from holding the job.
FINAL_EVALUATION_SECONDS = 300.0
# How long a server or the evaluator waits for a chief it has never reached, unless told: a chief
# pod may wait for a node (a cluster autoscaler takes minutes) and then for its image (pmlctl gives
# a pull 10 minutes, deploy/k8s/state.py IMAGE_PULL_GRACE; a test ties the two). Without a bound, a
# native-mode ps whose chief Job failed before the chief came up would wait forever (issue 26): its
# Job never finishes, so its TTL never collects it (kubernetes pkg/controller/ttlafterfinished/
# ttlafterfinished_controller.go, needsCleanup: finished Jobs only).
CHIEF_START_SECONDS = 1200.0


def first_contact_timeout(chief_start_timeout: float | None, orphan_timeout: float) -> float:
    """How long to wait for a chief never seen (--chief-start-timeout): no less than --orphan-timeout."""
    return max(orphan_timeout, CHIEF_START_SECONDS if chief_start_timeout is None else chief_start_timeout)


class StateServer:
    """Serves {"state": ..., "step": ...} at GET /; remembers which tasks have acknowledged the end.

    "step" is the final step (the chief's last checkpoint) once the state is "done", 0 before.
    """

    def __init__(self, port: int, expected_peers: set[str], host: str = ""):
        """Listen on `port` of `host`, the chief's host in TF_CONFIG: only on loopback when that
        is a loopback address (a local job), else on every interface of the pod or container.
        The endpoint has no authentication, so it must not be open to a network (issue 12)."""
        self.state = TRAINING
        self.step = 0
        self._expected = set(expected_peers)
        self._told: set[str] = set()
        self._changed = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
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
                    with owner._changed:
                        owner._told.update(query.get("task", []))
                        owner._changed.notify_all()

            def log_message(self, *args):  # keep the training log readable
                pass

        address = listen_host(host)
        server = _IPv6HTTPServer if ":" in address else ThreadingHTTPServer
        server.allow_reuse_address = True
        self._http = server((address, port), Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def finish(
        self, state: str, linger: float, step: int = 0, evaluator_linger: float | None = None, interrupted=lambda: False
    ) -> set[str]:
        """Publish the final state and wait until every peer has acknowledged it, or until its time
        is up or `interrupted()` is true; return the peers that did not acknowledge.

        Servers acknowledge as soon as they see the end and get `linger` s; the evaluator first
        evaluates the final checkpoint, and gets `evaluator_linger` s (default: `linger`).
        """
        self.step = step  # before the state: whoever reads "done" reads the final step with it
        self.state = state
        began = time.monotonic()
        patience = {
            peer: evaluator_linger if peer.startswith("evaluator:") and evaluator_linger is not None else linger
            for peer in self._expected
        }
        with self._changed:
            while not interrupted():
                waited = time.monotonic() - began
                left = [patience[p] - waited for p in self._expected - self._told if patience[p] > waited]
                if not left:
                    break
                self._changed.wait(min(max(left), 1.0))  # wakes at least once a second for `interrupted`
            missing = self._expected - self._told
        self._http.shutdown()
        return missing


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


POLL_TIMEOUT = 5.0  # seconds a poll waits for the chief's answer


class Busy(Exception):
    """The chief took the connection but did not answer in time: it is alive, only slow (a
    SavedModel export holds the interpreter on two busy cores)."""


def fetch_state(host: str, port: int, task: str, timeout: float | None = None, seen: bool = False) -> dict | None:
    """The chief's state, or None when it cannot be reached; `seen` acknowledges the end."""
    try:
        return _ask(host, port, task, timeout or POLL_TIMEOUT, seen)
    except Busy:
        return None


def _ask(host: str, port: int, task: str, timeout: float, seen: bool = False) -> dict | None:
    query = urllib.parse.urlencode({"task": task, **({"seen": "1"} if seen else {})})
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/?{query}", timeout=timeout) as reply:
            return json.load(reply)
    except TimeoutError:  # connected, then no answer in time
        raise Busy() from None
    # urllib wraps what fails while connecting and sending in URLError (AbstractHTTPHandler.do_open),
    # and lets a timeout waiting for the answer through as it is. A connection that timed out was
    # never taken: nothing answers at that address (a lost link, a host gone), which is not busy.
    except (OSError, ValueError):  # refused, reset, timed out connecting: nobody there (any more)
        return None


def acknowledge(host: str, port: int, task: str, attempts: int = 3) -> bool:
    """Tell the chief that `task` has seen the end (and done its last work), so that it may leave."""
    return any(fetch_state(host, port, task, seen=True) is not None for _ in range(attempts))


def wait_for_end(
    host: str,
    port: int,
    task: str,
    orphan_timeout: float,
    on_poll=lambda: None,
    interval: float = 1.0,
    before_acknowledging=lambda reply: True,
    first_contact_timeout: float | None = None,
) -> str:
    """Block until the chief says the job is over; return its final state.

    A chief that has not come up yet is waited for. A chief that was seen and then vanished may be
    restarting from a checkpoint, so that too is waited for, up to `orphan_timeout` seconds.
    `on_poll` runs once per poll (the evaluator uses it to evaluate new checkpoints).
    `before_acknowledging(reply)` runs once the chief has said the job is over, with its last
    answer; the end is acknowledged after it, and only if it returns True. The chief waits for the
    acknowledgement before it exits, so whatever must be done before the job ends goes there.
    A chief never reached is waited for up to `first_contact_timeout` seconds (None: without end).
    """
    seen, gone_since, began = False, None, time.monotonic()
    while True:
        try:
            reply = _ask(host, port, task, POLL_TIMEOUT)
        except Busy:  # a busy chief is not a gone one
            seen, gone_since = True, None
            on_poll()
            continue
        if reply is not None:
            seen, gone_since = True, None
            if reply.get("state") in (DONE, FAILED):
                if before_acknowledging(reply):
                    acknowledge(host, port, task)  # lets the chief leave before its linger ends
                return reply["state"]
        elif seen:
            if gone_since is None:
                gone_since = time.monotonic()
                log.info(
                    f"{task}: the chief at {host}:{port} stopped answering; waiting up to "
                    f"{orphan_timeout:.0f}s for it to come back"
                )
            if time.monotonic() - gone_since > orphan_timeout:
                return FAILED
        elif first_contact_timeout is not None and time.monotonic() - began > first_contact_timeout:
            log.warning(
                f"{task}: no chief answered at {host}:{port} in {first_contact_timeout:.0f}s; giving up "
                "(the chief failed before it came up, or never started)"
            )
            return FAILED
        on_poll()
        time.sleep(interval)


def heard_the_end(over: threading.Event):
    """A `before_acknowledging` for wait_for_end that remembers in `over` that the chief said DONE."""

    def note(reply: dict) -> bool:
        if reply.get("state") == DONE:
            over.set()
        return True

    return note


def drain(host: str, port: int, over: threading.Event, seconds: float, interval: float = 0.5) -> int:
    """A server's exit code on SIGTERM: keep serving while the chief still answers (at most
    `seconds`), then 0 if the chief said training is over, else PREEMPTED.

    Stopped before the end, the task must exit with a retryable code: the kubelet ends a pod on a
    node that shuts down, or under memory pressure, as Failed with the container's own exit code
    (kubernetes pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go, pkg/kubelet/eviction/
    eviction_manager.go), and under `restartPolicy: ExitCode` the Training Operator fails the whole
    TFJob on a code below 128 (kubeflow/trainer v1.9.4, pkg/controller.v1/common/pod.go, ReconcilePods).
    """
    deadline = time.monotonic() + seconds
    while not over.is_set() and time.monotonic() < deadline:
        try:
            reply = _ask(host, port, "", min(POLL_TIMEOUT, max(deadline - time.monotonic(), 0.1)))
        except Busy:  # alive, only slow: saving its checkpoint, which reads from this server
            continue
        if reply is None:
            break
        if reply.get("state") == DONE:
            over.set()
        elif reply.get("state") == FAILED:
            return exits.CHIEF_FAILED
        else:
            time.sleep(interval)
    return exits.OK if over.is_set() else exits.PREEMPTED
