"""The trainer's log: the standard `logging` module, one line per event, on stderr.

Every line reads `TIME LEVEL TASK message`, for example
`2026-12-06T03:01:02.345Z INFO chief-0 resumed from checkpoint at step 280 (epoch 3)`. The tasks
of a job write side by side (the local supervisor's files, `docker logs`, `kubectl logs`), so a UTC
time to the millisecond and the task's name let a person line them up. The per-epoch table is a
report, not a log, and stays on stdout (`trainer/epoch_report.py`).

A task's reason for failing is its last ERROR line: `message_of` reads it back for the
supervisor's status (deploy/supervisor.py), which shows it as `error: <message>`.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import TextIO

log = logging.getLogger("trainer")

# Before TF_CONFIG names the task (a refusal of the flags or of TF_CONFIG itself).
UNNAMED = "trainer"
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) (?P<task>\S+) (?P<message>.*)$")


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]  # subscriptable only from Python 3.11
    """Whatever `sys.stderr` is at the time of the record, as logging's own last-resort handler does
    (a test's capture replaces it after the handler is made)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr


def configure(task: str = UNNAMED) -> None:
    """Send the trainer's records to stderr as `TIME LEVEL TASK message`; again to rename the task."""
    _send_to_stderr(_UtcFormatter(f"%(asctime)s %(levelname)s {task} %(message)s"))


class _Said(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def configure_for_cli() -> None:
    """In pmlctl, which runs the trainer's storage code (`artifacts`, `compare`): its records as
    pmlctl's own lines, `warning: ...` and `error: ...`; a note as it is."""
    _send_to_stderr(_Said())


def _send_to_stderr(formatter: logging.Formatter) -> None:
    handler = _Stderr()
    handler.setFormatter(formatter)
    for old in list(log.handlers):
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def message_of(line: str) -> tuple[str, str] | None:
    """(level, message) of one of our log lines; None for any other line (TensorFlow's own, a table row)."""
    match = LINE.match(line)
    return (match["level"], match["message"]) if match else None
