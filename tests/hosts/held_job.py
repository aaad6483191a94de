"""A job on test hosts that runs until its pytest is killed. Not collected (no test_ prefix):
tests/hosts/test_cleanup.py runs it in a pytest of its own, then SIGKILLs that pytest."""

from __future__ import annotations

import json
import os
import pathlib
import threading

import pytest
from conftest import alive, wait_for

from hosts.scenario import HostJob

pytestmark = pytest.mark.hosts


def test_a_job_that_runs_until_killed(hosts_env, tmp_path):
    with HostJob("held", tmp_path / "model") as job:
        timeline = job.submit()
        wait_for(lambda: timeline.when(r"chief-0 \| training mlp"), 300, "training to begin")
        state = job.state()
        assert all(alive(t["pid"]) for t in state["tasks"])
        said = {
            "prefix": job.lab.prefix,
            "janitor": job.lab.janitor.pid,
            "model_dir": str(job.model_dir),
            "supervisor": state["details"]["supervisor_pid"],
            "tasks": [t["pid"] for t in state["tasks"]],
        }
        pathlib.Path(os.environ["PML_HELD_JOB"]).write_text(json.dumps(said))
        threading.Event().wait(600)  # for the SIGKILL
