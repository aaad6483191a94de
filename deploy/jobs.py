"""Where the control plane keeps what it knows about jobs it started on this machine.

Each local or docker job has a folder `$PML_HOME/jobs/<name>/` (default `~/.pml`) holding
`job.json`, its current state, and one log file per task.
"""

from __future__ import annotations

import json
import os
import pathlib


def home() -> pathlib.Path:
    return pathlib.Path(os.environ.get("PML_HOME", pathlib.Path.home() / ".pml"))


def job_dir(name: str) -> pathlib.Path:
    return home() / "jobs" / name


def write_state(folder: pathlib.Path, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "job.json.part"
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, folder / "job.json")


def read_state(name: str) -> dict | None:
    path = job_dir(name) / "job.json"
    return json.loads(path.read_text()) if path.is_file() else None


def all_states() -> list[dict]:
    root = home() / "jobs"
    states = [json.loads(p.read_text()) for p in sorted(root.glob("*/job.json"))] if root.is_dir() else []
    return states
