"""Where the control plane keeps what it knows about the jobs it runs on this machine.

Each local or docker job has a folder `$PML_HOME/jobs/<name>/` (default `~/.pml`) holding
`job.json`, its status (a `JobStatus`, written by its supervisor), `output.log`, what the
supervisor printed (every task's lines, prefixed), and one log file per task.
"""

from __future__ import annotations

import json
import os
import pathlib

from deploy.target import JobStatus
from pml_trainer import durable


def home() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PML_HOME", pathlib.Path.home() / ".pml"))


def job_dir(name: str) -> pathlib.Path:
    return home() / "jobs" / name


def write(folder: pathlib.Path, status: JobStatus) -> None:
    # Synced (pml_trainer.durable): a job.json that a power loss left empty made `pmlctl list`
    # fail on every job, not only this one.
    durable.write_text(folder / "job.json", json.dumps(status.to_json(), indent=2) + "\n")


def read(name: str) -> JobStatus | None:
    try:
        return JobStatus.from_json(json.loads((job_dir(name) / "job.json").read_text()))
    except FileNotFoundError:  # never started, or deleted meanwhile
        return None


def every() -> list[JobStatus]:
    root = home() / "jobs"
    found = (read(p.parent.name) for p in sorted(root.glob("*/job.json"))) if root.is_dir() else ()
    return [status for status in found if status is not None]
