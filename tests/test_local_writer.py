"""Issue 25, defect 8: a local model dir has one chief writing it at a time. It may be a volume
that machines share (NFS, a shared PersistentVolume), with no pointer to compare and swap; its
chief holds a lock file in it (pml_trainer.model_dir.hold_local), and a second chief exits 177,
retryable, naming the holder, until the first has ended. Separate processes on one folder, as
two chiefs are; no TensorFlow."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys

from conftest import said

from pml_trainer import exits, model_dir

# A chief as far as the model dir goes: it takes the model dir as a writer, says so, and holds
# it until its stdin closes (or it is killed).
HOLDER = r"""
import os, sys
from pml_trainer.model_dir import ModelDir
try:
    ModelDir(sys.argv[1], None, "chief-0", 3, writer=True)
except Exception as err:
    print(f"refused: {err}", flush=True)
    sys.exit(177)
print(f"holding {os.getpid()}", flush=True)
sys.stdin.read()
"""

# `python -m pml_trainer`'s main(), then whether it imported TensorFlow.
TRAINER = (
    "import sys; from pml_trainer.__main__ import main; code = main(sys.argv[1:]); "
    "print(sorted(m for m in sys.modules if m == 'tensorflow')); sys.exit(code)"
)


def holder(folder) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    proc.first_line = proc.stdout.readline().strip()
    return proc


def trainer(folder, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", TRAINER, "--epochs", "1", "--train-examples", "64", "--model-dir", str(folder), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_second_chief_is_refused_while_the_first_lives_and_gets_in_after(tmp_path):
    folder = tmp_path / "model"
    first = holder(folder)
    try:
        assert first.first_line == f"holding {first.pid}"
        second = holder(folder)
        assert second.wait(timeout=60) == exits.FENCED
        assert second.first_line.startswith(
            f"refused: --model-dir {folder} is being written by another chief (pid {first.pid} on "
            f"{socket.gethostname()}, since "
        )
        # The trainer refuses before TensorFlow loads, in one line, with the retryable code.
        result = trainer(folder)
        assert result.returncode == exits.FENCED and exits.is_retryable(result.returncode)
        (line,) = result.stderr.splitlines()
        assert said(line).startswith(f"error: --model-dir {folder} is being written by another chief (pid {first.pid} ")
        assert "exiting for a restart" in line and "another --model-dir" in line
        assert result.stdout == "[]\n"
    finally:
        first.communicate("", timeout=30)
    third = holder(folder)  # the first has ended: its restart gets in
    try:
        assert third.first_line == f"holding {third.pid}"
    finally:
        third.communicate("", timeout=30)


def test_restart_deletes_nothing_while_another_chief_holds_the_model_dir(tmp_path):
    folder = tmp_path / "model"
    first = holder(folder)
    try:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
        assert trainer(folder, "--restart").returncode == exits.FENCED
        assert (folder / "checkpoints" / "checkpoint").is_file()
    finally:
        first.communicate("", timeout=30)


def test_a_killed_chief_leaves_the_model_dir_free(tmp_path):
    """The kernel drops the lock with its process, however it ends: nothing stale to clean up."""
    folder = tmp_path / "model"
    first = holder(folder)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    second = holder(folder)
    try:
        assert second.first_line == f"holding {second.pid}"
    finally:
        second.communicate("", timeout=30)


def test_one_process_may_take_its_own_model_dir_twice(tmp_path):
    """flock belongs to an open file: a second open in the same process must not refuse it."""
    model_dir.hold_local(tmp_path)
    model_dir.hold_local(tmp_path)
    model_dir.ModelDir(str(tmp_path), None, "chief-0", 3, writer=True)
    other = holder(tmp_path)
    assert other.wait(timeout=60) == exits.FENCED and other.first_line.startswith("refused:")


def test_a_file_system_without_locks_is_warned_about_not_refused(tmp_path, monkeypatch, capfd):
    """A chief that ran there before still runs, unfenced as before, and is told so."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))  # an NFS mount without a lock manager

    monkeypatch.setattr(model_dir.fcntl, "flock", no_locks)
    model_dir.hold_local(tmp_path / "nfs")
    assert f"cannot lock {tmp_path / 'nfs' / model_dir.LOCK_FILE}" in capfd.readouterr().err
