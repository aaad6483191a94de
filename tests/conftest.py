"""Shared helpers: run `pmlctl` and the trainer as real processes, and find shared/."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MEASURED = pytest.StashKey[list]()


def measured(config: pytest.Config, line: str) -> None:
    """A line for the end of the run's output, where `make test` shows it (it runs without -s)."""
    config.stash.setdefault(MEASURED, []).append(line)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    lines = config.stash.get(MEASURED, [])
    if lines:
        terminalreporter.section("measured")
        for line in lines:
            terminalreporter.write_line(line)


def said(line: str) -> str:
    """A trainer's log line (trainer/log.py) as the words it says: `error: ...`, `warning: ...`, or the message."""
    from pml_trainer.log import message_of

    level, message = message_of(line) or ("", line)
    return f"{level.lower()}: {message}" if level in ("ERROR", "WARNING") else message


@pytest.fixture(autouse=True)
def trainer_log():
    """The trainer's log as its processes write it, for the modules a test runs in-process."""
    from pml_trainer.log import configure

    configure("test-0")


def logged_by(module, monkeypatch) -> list[str]:
    """The messages that `module` logs from now on, in order, as a list that grows."""
    from pml_trainer.log import log

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.pathname == module.__file__:
                messages.append(record.getMessage())

    monkeypatch.setattr(log, "handlers", [*log.handlers, Collect()])
    return messages


def shared_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PML_SHARED", ROOT.parent / "shared"))


@pytest.fixture
def pml_home(tmp_path, monkeypatch) -> pathlib.Path:
    home = tmp_path / "pml-home"
    monkeypatch.setenv("PML_HOME", str(home))
    return home


def pmlctl(*args: str, cwd: pathlib.Path, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def start_pmlctl(*args: str, cwd: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def job_state(home: pathlib.Path, name: str) -> dict:
    return json.loads((home / "jobs" / name / "job.json").read_text())


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` s.

    Polling a condition is the synchronisation here: the test waits for a fact (a checkpoint
    on disk, a line in a log), never for an amount of time.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process ended (code {proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    """Is `pid` a live (not zombie) process?"""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line or TF_CONFIG mentions `text`."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def metrics(model_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]


def latest_saved_step(model_dir: pathlib.Path) -> int:
    """The step of the checkpoint a restart would restore from a local model dir (0: none)."""
    state = model_dir / "checkpoints" / "checkpoint"
    if not state.is_file():
        return 0
    match = re.search(r'^model_checkpoint_path: ".*ckpt-(\d+)"', state.read_text(), re.M)
    return int(match.group(1)) if match else 0


def saved_learning_rate(model_dir: pathlib.Path) -> float:
    """The optimizer's learning rate in the latest checkpoint of a local model dir."""
    import tensorflow as tf  # only the jobs' tests need it, and it takes seconds to import

    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    return float(reader.get_tensor("optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE"))


def assert_nothing_left(home: pathlib.Path, name: str, model_dir: pathlib.Path) -> dict:
    """No task of the job is alive, nor any process that mentions its model dir; the job state."""
    state = job_state(home, name)
    assert [t for t in state["tasks"] if alive(t["pid"])] == []
    assert processes_mentioning(str(model_dir)) == []
    return state
