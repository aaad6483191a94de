"""The trainer in a container sizes its thread pools to the container's CPU limit, which
TensorFlow alone does not see (pml_trainer.cpus): the cgroup files of a real runtime, not a fixture."""

from __future__ import annotations

import os

import pytest
from dockerd import docker, docker_env, trainer_image  # noqa: F401 (fixtures)

pytestmark = pytest.mark.docker
SHARE = (
    "import os; from pml_trainer import cpus, tf_config; print(len(os.sched_getaffinity(0)), cpus.available(), "
    "*cpus.intra_op_threads(0, tf_config.ALONE), sep='|')"
)


def in_container(env, image: str, *docker_args: str) -> list[str]:
    done = docker(env, "run", "--rm", *docker_args, "--entrypoint", "python", image, "-c", SHARE, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().split("|")


def test_a_container_limited_to_a_cpu_and_a_half_gets_one_thread_per_op(docker_env, trainer_image):
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.fail("this test needs 2 CPUs, to give a container 1.5 of them")
    assert in_container(docker_env, trainer_image, "--cpus", "1.5")[1:] == [
        "1.5",
        "1",
        "1 thread per op: 1.5 CPUs for this task (--intra-op-threads sets it)",
    ]


def test_an_unlimited_container_leaves_the_pool_to_tensorflow(docker_env, trainer_image):
    cores, *share = in_container(docker_env, trainer_image)
    assert share == [f"{int(cores):.1f}", "0", ""]
