"""Issue 26, item 1: a task stopped before training ended exits with a retryable code (PREEMPTED,
143); one that ends because training is over exits 0.

The kubelet ends a pod on a node that shuts down, or under memory pressure, as Failed with the
container's own exit code (kubernetes pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go,
pkg/kubelet/eviction/eviction_manager.go); under `restartPolicy: ExitCode` the Training Operator
fails the whole TFJob on a code below 128 (kubeflow/trainer v1.9.4, pkg/controller.v1/common/pod.go,
ReconcilePods). The chief's own exit codes on SIGTERM are held by tests/test_faults.py
(test_sigterm_to_the_whole_job_saves_and_a_relaunch_resumes: 143) and by train._tell_the_end (0
once the end is told).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import types

import pytest
from conftest import wait_for
from storage_servers import free_port

from pml_trainer import chief_state, exits


@pytest.fixture
def chief():
    port = free_port()
    server = chief_state.StateServer(port, {"worker:0"}, host="127.0.0.1")
    yield server, port
    server._http.shutdown()


def test_a_server_stopped_while_the_chief_trains_exits_retryable(chief):
    _, port = chief
    code = chief_state.drain("127.0.0.1", port, threading.Event(), seconds=0.3, interval=0.05)
    assert code == exits.PREEMPTED and exits.is_retryable(code)


def test_a_server_stopped_while_its_chief_is_away_exits_retryable():
    code = chief_state.drain("127.0.0.1", free_port(), threading.Event(), seconds=5)
    assert code == exits.PREEMPTED


def test_a_server_stopped_after_the_chief_said_done_exits_0(chief):
    server, port = chief
    server.state = chief_state.DONE
    over = threading.Event()
    assert chief_state.drain("127.0.0.1", port, over, seconds=5) == exits.OK
    assert over.is_set()


def test_a_server_that_heard_the_end_before_sigterm_exits_0_once_the_chief_left(chief):
    server, port = chief
    server.state = chief_state.DONE
    over = threading.Event()
    # The main thread's watch hears "done" and acknowledges it; then the chief leaves.
    final = chief_state.wait_for_end(
        "127.0.0.1", port, "worker:0", 5, before_acknowledging=chief_state.heard_the_end(over)
    )
    assert final == chief_state.DONE and over.is_set()
    server._http.shutdown()
    assert chief_state.drain("127.0.0.1", port, over, seconds=5) == exits.OK


def test_a_server_stopped_after_the_chief_failed_says_so(chief):
    server, port = chief
    server.state = chief_state.FAILED
    assert chief_state.drain("127.0.0.1", port, threading.Event(), seconds=5) == exits.CHIEF_FAILED


def test_a_server_stays_while_its_chief_is_busy_saving():
    """The chief answers SIGTERM by saving a checkpoint, which reads every variable from the
    parameter servers; a chief too busy to answer within the poll's timeout is still there, and
    a ps that left then would lose that checkpoint."""
    import socket
    import time

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(16)  # takes connections, answers none: a chief holding its interpreter
    busy_port = busy.getsockname()[1]
    began = time.monotonic()
    try:
        code = chief_state.drain("127.0.0.1", busy_port, threading.Event(), seconds=2.5, interval=0.05)
    finally:
        busy.close()
    assert code == exits.PREEMPTED
    assert time.monotonic() - began >= 2.0  # before: gone after the first poll's 1 s


class _Uploader:
    def __init__(self, pending: int):
        self._pending = pending

    def pending(self) -> int:
        return self._pending


class _ModelDir:
    def __init__(self, pending: int):
        self.uploader = _Uploader(pending)
        self.closed = False

    def close(self, seconds=None):
        self.closed = True


@pytest.fixture
def evaluator(monkeypatch):
    from pml_trainer import evaluator

    codes = []

    def exit_(code):
        codes.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(evaluator.os, "_exit", exit_)

    class Now:  # runs at once what a thread or a timer would run
        def __init__(self, *args, target=None, **kwargs):
            fn = target or args[1]
            self.run = lambda: fn(*kwargs.get("args", ()))

        def start(self):
            self.run()

    monkeypatch.setattr(evaluator, "threading", types.SimpleNamespace(Thread=Now, Timer=Now))
    return evaluator, codes


@pytest.mark.parametrize("pending", [0, 2])
def test_an_evaluator_stopped_before_the_end_exits_retryable(evaluator, pending):
    module, codes = evaluator
    model_dir = _ModelDir(pending)
    with pytest.raises(SystemExit):
        module.OnSigterm(model_dir)()
    assert codes == [exits.PREEMPTED]  # before: 0, and a preempted evaluator failed the TFJob
    assert model_dir.closed == bool(pending)  # its queued rows were uploaded first


def test_an_evaluator_stopped_during_the_final_evaluation_exits_0(evaluator):
    module, codes = evaluator
    handler = module.OnSigterm(_ModelDir(0))
    handler.finishing = True  # the chief said done
    with pytest.raises(SystemExit):
        handler()
    assert codes == [exits.OK]


SIGTERM_BIT = 1 << (15 - 1)  # in /proc/PID/status SigCgt: the signals a process has handlers for


def caught(pid: int) -> bool:
    try:
        status = dict(line.split(":\t", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":\t" in line)
    except FileNotFoundError:
        return False
    return bool(int(status["SigCgt"], 16) & SIGTERM_BIT)


@pytest.mark.skipif(not shutil.which("unshare") or os.geteuid() != 0, reason="needs unshare and root (a PID namespace)")
def test_a_task_stopped_while_it_starts_exits_143_at_once_even_as_pid_1(tmp_path):
    """In a container the task is PID 1, and the kernel drops a signal PID 1 has no handler for
    (pid_namespaces(7)): stopped before its role caught SIGTERM, a pod ran on until SIGKILL at the
    end of the grace period and ended 137, a crash to TFJob mode (found in the pod tier)."""
    cluster = {
        "chief": [f"127.0.0.1:{free_port()}"],
        "ps": [f"127.0.0.1:{free_port()}"],
        "worker": [f"127.0.0.1:{free_port()}"],
    }
    env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "ps", "index": 0}})}
    proc = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            sys.executable,
            "-m",
            "pml_trainer",
            "--model-dir",
            str(tmp_path / "m"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        task = wait_for(
            lambda: [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()],
            30,
            "the task in its PID namespace",
            proc,
        )
        wait_for(lambda: caught(task[0]), 60, "a SIGTERM handler", proc)
        os.kill(task[0], signal.SIGTERM)
        assert proc.wait(timeout=30) == exits.PREEMPTED
        # Stopped while it started: the ps never served (without the early handler, the first one to
        # catch SIGTERM was the ps's own, installed just before it starts serving).
        output = proc.stdout.read().decode()
        assert "serving at" not in output, output[-2000:]
    finally:
        proc.kill()
        proc.wait()
