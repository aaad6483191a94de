"""`pmlctl compare -t docker`: the study's comparison with every run as containers (issue 13).

Opt-in (`make test-docker`), with the daemon and image of tests/docker/dockerd.py: one process
against a 1x0 and a 2x1 cluster, each run a docker job named after the experiment, its metrics
read from its model dir once it has ended.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from dockerd import docker, docker_env, trainer_image  # noqa: F401 (fixtures)

pytestmark = pytest.mark.docker
TINY = ["--epochs", "1", "--train-examples", "3000", "--batch-size", "100"]


def test_compare_runs_each_shape_as_containers(docker_env, trainer_image, tmp_path):
    env = {**docker_env, "PML_HOME": str(tmp_path / "pml-home")}
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy",
            "compare",
            "-t",
            "docker",
            "--name",
            "dcmp",
            "--shape",
            "1x0",
            "--shape",
            "2x1",
            *TINY,
            "--out",
            str(tmp_path / "out"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    print(f"\ncompare -t docker, 3 runs: {time.monotonic() - started:.0f}s", file=sys.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    table = json.loads((tmp_path / "out" / "compare.json").read_text())["tables"][0]
    assert [(r["shape"], r["runs"]) for r in table["rows"]] == [
        ("1 process", 1),
        ("1 chief, 1 worker, 0 ps", 1),
        ("1 chief, 2 workers, 1 ps", 1),
    ]
    for _label, (run,) in table["runs"].items():
        result = json.loads(open(f"{run['model_dir']}/result.json").read())
        assert run["seconds"] == result["train_seconds"] > 0 and run["epochs"] == 1
        assert run["model_dir"].startswith(str(tmp_path / "runs" / "dcmp" / "dcmp-"))
    assert table["rows"][2]["speedup"] == pytest.approx(table["rows"][0]["seconds"] / table["rows"][2]["seconds"])

    listed = subprocess.run(
        [sys.executable, "-m", "deploy", "list"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    assert listed[1].split()[:3] == ["dcmp", "docker", "Succeeded"] and "3 runs (3 Succeeded)" in listed[1]
    for run in ("dcmp-0-0", "dcmp-1-0", "dcmp-2-0"):
        assert docker(env, "ps", "-aq", "--filter", f"label=pml.job={run}").stdout.split() == []
