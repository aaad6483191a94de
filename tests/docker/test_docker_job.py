"""The trainer image, proven by a real job: 1 chief, 2 workers and 1 ps as containers on one network.

Opt-in (`make test-docker`): it installs Docker if needed, starts its own daemon and builds the
image, which downloads TensorFlow the first time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from dockerd import docker, docker_env, trainer_image, wait_until  # noqa: F401 (fixtures)

pytestmark = pytest.mark.docker

JOB = "dockjob"
CONTAINERS = [f"{JOB}-ps-0", f"{JOB}-worker-0", f"{JOB}-worker-1", f"{JOB}-chief-0"]
NON_ROOT = 10001  # the JobSpec's run_as_user, which containers get when pmlctl runs as root


def pmlctl(env, cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def trainer_uids(env, container: str) -> set[int]:
    """UIDs of the trainer processes in a running container (none once it is gone)."""
    top = docker(env, "top", container, "-eo", "pid,uid,args", timeout=30)  # dockerd 20.10 needs the pid
    return {int(line.split()[1]) for line in top.stdout.splitlines()[1:] if "-m pml_trainer" in line}


def test_a_ps_job_runs_to_success_in_containers_as_a_non_root_user(docker_env, trainer_image, tmp_path):
    env = {**docker_env, "PML_HOME": str(tmp_path / "pml-home")}
    log = tmp_path / "submit.log"
    with open(log, "w") as out:
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy",
                "submit",
                "--target",
                "docker",
                "--name",
                JOB,
                "--workers",
                "2",
                "--ps",
                "1",
                "--epochs",
                "2",
                "--train-examples",
                "6000",
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    uids: dict[str, set[int]] = {}

    def every_trainer_seen() -> bool:
        """Who the training processes run as, read from the host while the containers are up."""
        for container in CONTAINERS:
            if container not in uids and (found := trainer_uids(env, container)):
                uids[container] = found
        return len(uids) == len(CONTAINERS) or job.poll() is not None

    try:
        wait_until(every_trainer_seen, 300, "all four containers running the trainer")
        job.wait(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    output = log.read_text()
    assert job.returncode == 0, output[-4000:]
    assert uids == {c: {NON_ROOT if os.getuid() == 0 else os.getuid()} for c in CONTAINERS}, output[-4000:]

    model_dir = tmp_path / "runs" / JOB
    metrics = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    result = json.loads((model_dir / "result.json").read_text())
    assert result["epochs"] == 2 and result["steps"] == metrics[-1]["step"] > 0
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert (model_dir / "saved_model" / "saved_model.pb").is_file()
    assert (model_dir / "result.json").stat().st_uid == next(iter(uids[f"{JOB}-chief-0"]))
    for task in ("ps-0", "worker-0", "worker-1", "chief-0"):
        assert f"{task:>11} | " in output  # each container's log, streamed with its prefix

    assert docker(env, "ps", "-aq", "--filter", f"label=pml.job={JOB}").stdout.split() == []
    assert docker(env, "network", "ls", "-q", "--filter", f"label=pml.job={JOB}").stdout.split() == []

    state = json.loads(pmlctl(env, tmp_path, "status", JOB, "-o", "json").stdout)
    assert (state["target"], state["phase"]) == ("docker", "Succeeded")
    assert {t["where"] for t in state["tasks"]} == {f"{c}:2222" for c in CONTAINERS}
    assert "test accuracy" in pmlctl(env, tmp_path, "logs", JOB).stdout
    deleted = pmlctl(env, tmp_path, "delete", JOB)
    assert deleted.returncode == 0 and not (tmp_path / "pml-home" / "jobs" / JOB).exists()
