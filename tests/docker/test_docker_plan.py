"""`pmlctl plan -t docker`: the calibration's probes as containers of the job's image (issue 27).

Opt-in (`make test-docker`), with the daemon and image of tests/docker/dockerd.py. Each
container's trainer reports its CPU, its memory, and the bytes its network namespace received
(pml_trainer.readings): over the containers' links here, not over one loopback as on the local
target.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from dockerd import docker_env, trainer_image  # noqa: F401 (fixtures)

from pml_trainer import readings

pytestmark = pytest.mark.docker


def test_plan_calibrates_the_job_as_containers(docker_env, trainer_image, tmp_path):
    env = {**docker_env, "PML_HOME": str(tmp_path / "pml-home")}
    argv = [sys.executable, "-m", "deploy", "plan", "-t", "docker", "--image", trainer_image, "--probe-steps", "50"]
    done = subprocess.run(
        [*argv, "--workers", "0..2", "--ps", "0..2", "-o", "json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cal = json.loads(done.stdout)["calibration"]
    print(f"\ncalibration: {json.dumps({k: v for k, v in cal.items() if k != 'measured'})}", file=sys.stderr)
    assert cal["where"].startswith("-t docker on ")
    # A worker's step brings the weights in and sends the gradients out, each the parameters'
    # size, plus the protocols' framing (Ethernet, IP, TCP, gRPC): the containers' links saw them.
    # The counters are read every INTERVAL and interpolated at the measured epochs' two edges, so
    # each edge may miss or add the bytes of the steps within one interval (0.997 once, over 100
    # steps of 7.5 ms).
    probe = cal["measured"]["ps_job"]
    edges = 2 * (readings.INTERVAL / probe["step"]) / probe["steps"]
    assert 1.0 - edges < cal["bytes_in"] / cal["parameter_bytes"] < 1.3 + edges, (edges, cal)
    assert cal["step_cpu"] > 0 and cal["local_cpu"] > 0 and cal["ps_cpu"] is not None and cal["allreduce_cpu"] >= 0
    assert all(cal["memory"][role] > 100e6 for role in ("local", "worker", "ps")), cal["memory"]
    # The bytes are the containers' own: each probe's jobs ran in containers, none on this machine.
    assert cal["measured"]["bytes_counted"] is True
