"""`pmlctl check -t docker`: the task tried once in the trainer image, as a docker job's containers
would run it, and a bad task failing there in the user's terms (issue 24).

Opt-in (`make test-docker`), with the tier's own daemon and image (tests/docker/dockerd.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import pytest
from dockerd import docker, docker_env, trainer_image  # noqa: F401 (fixtures)
from test_tasks import GOOD, HELPERS, REGRESSION, workspace

from pml_trainer import exits

pytestmark = pytest.mark.docker


def check(env, cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy", "check", "-t", "docker", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def containers(env) -> list[str]:
    return docker(env, "ps", "-aq", timeout=60).stdout.split()


def test_the_regression_task_checks_in_the_image(docker_env, trainer_image, tmp_path):
    """Its data inside the workspace: the container sees the workspace, not this machine's /tmp."""
    ws = tmp_path / "ws"
    shutil.copytree(REGRESSION, ws)
    subprocess.run([sys.executable, "make_data.py", "data"], cwd=ws, check=True, capture_output=True)
    began = time.monotonic()
    result = check(
        docker_env,
        tmp_path,
        *("--task", "trainer/task.py", "--workspace", str(ws), "--image", trainer_image, "-o", "json"),
        *("--task-param", "train=data/train-*.tfrecord", "--task-param", "eval=data/eval-*.tfrecord"),
    )
    seconds = time.monotonic() - began
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["workspace"] == "/workspace" and report["code_digest"].startswith("sha256:")
    assert report["batch"]["features"] == {"": {"dtype": "float32", "shape": [256, 8]}}
    assert report["metrics"] == ["loss", "mae"]
    assert report["after_step"]["loss"] < report["before_step"]["loss"]
    assert report["serving"]["serving_default"]["outputs"] == {"outputs": {"dtype": "float32", "shape": [None, 1]}}
    print(f"\npmlctl check -t docker of the regression task: {seconds:.1f}s (in the container: {report['seconds']}s)")
    assert containers(docker_env) == []  # --rm
    assert not (tmp_path / "runs").exists()


def test_a_bad_task_fails_in_the_image_in_the_users_terms(docker_env, trainer_image, tmp_path):
    ws = workspace(tmp_path, t=GOOD, helpers=HELPERS)
    result = check(docker_env, ws, "--task", "t.py", "--task-param", "fail=model", "--image", trainer_image)
    assert result.returncode == exits.BAD_INPUT, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "error: task t.py failed while building its model: ValueError: the user's own bug (helpers.py, line 19, in explode)"
    ), result.stderr
    frames = re.findall(r'^  File "([^"]+)"', result.stderr, re.M)
    assert frames and all(f.startswith("/workspace/") for f in frames), result.stderr
    assert containers(docker_env) == []


def test_an_image_that_is_not_there_is_one_line(docker_env, tmp_path):
    result = check(docker_env, tmp_path, "--image", "parallel-ml:no-such-tag")
    assert result.returncode == exits.BAD_INPUT
    assert result.stderr.startswith("error: image parallel-ml:no-such-tag is not on this machine; build it"), (
        result.stderr
    )
