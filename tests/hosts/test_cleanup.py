"""Nothing of a lab is left when the pytest that made it is killed mid-job, SIGKILL included:
no namespace, no hosts file, no task, no supervisor."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import ROOT, alive, processes_mentioning, wait_for

from hosts.conftest import TESTS
from hosts.network import leftovers

pytestmark = [pytest.mark.hosts, pytest.mark.slow]


def test_sigkill_of_pytest_mid_job_leaves_nothing(as_root, tmp_path):
    told = tmp_path / "held.json"
    env = {**os.environ, "PML_HELD_JOB": str(told), "PYTHONPATH": str(TESTS)}
    inner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "inner"),
            str(pathlib.Path(__file__).with_name("held_job.py")),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    held = json.loads(wait_for(lambda: told.is_file() and told.read_text(), 300, "the held job's tasks", inner))
    assert len(leftovers(held["prefix"])) == 9  # the switch, 4 hosts and their 4 folders
    inner.kill()
    inner.wait()
    wait_for(lambda: not alive(held["janitor"]), 60, "the janitor to finish")
    assert leftovers(held["prefix"]) == []
    wait_for(lambda: not alive(held["supervisor"]), 60, "the supervisor to stop")
    assert [pid for pid in held["tasks"] if alive(pid)] == []
    assert processes_mentioning(held["model_dir"]) == []
