"""What `pmlctl submit --target docker` would run, read back from its dry run. No Docker needed."""

from __future__ import annotations

import os
import shlex

import pytest
from conftest import pmlctl

from pml_trainer import cpus
from pml_trainer.tf_config import parse

JOB = "study"
NON_ROOT = (10001, 10001)  # the JobSpec's security default, used when pmlctl itself runs as root


def runs(stdout: str) -> dict[str, list[str]]:
    """Container name -> the argv of its `docker run`."""
    commands = [shlex.split(line) for line in stdout.splitlines() if line.startswith("  docker run ")]
    return {argv[argv.index("--name") + 1]: argv for argv in commands}


def values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


@pytest.fixture
def dry_run(tmp_path, pml_home):
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "id-from-host",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "GOOGLE_CLOUD_PROJECT": "p",
        "STORAGE_EMULATOR_HOST": "http://gcs:9023",
        "UNRELATED": "x",
        "PML_DOCKER": "docker",
    }
    (tmp_path / "job.yaml").write_text("env:\n  TF_CPP_MIN_LOG_LEVEL: '1'\n  AWS_REGION: eu-west-1\n")
    result = pmlctl(
        "submit",
        "--target",
        "docker",
        "--dry-run",
        "--name",
        JOB,
        "-f",
        "job.yaml",
        "--workers",
        "2",
        "--ps",
        "1",
        "--evaluator",
        "--epochs",
        "2",
        "--train-examples",
        "6000",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result, tmp_path


def test_one_container_per_task_named_after_the_job_and_started_servers_first(dry_run):
    result, _ = dry_run
    assert list(runs(result.stdout)) == [
        "study-ps-0",
        "study-worker-0",
        "study-worker-1",
        "study-evaluator-0",
        "study-chief-0",
    ]
    assert "docker network create --label pml.job=study study" in result.stdout.splitlines()


def test_each_tf_config_addresses_the_others_by_container_name(dry_run):
    result, _ = dry_run
    for container, argv in runs(result.stdout).items():
        (tf_config,) = [v.removeprefix("TF_CONFIG=") for v in values(argv, "-e") if v.startswith("TF_CONFIG=")]
        cfg = parse(tf_config)
        assert cfg.cluster == {
            "ps": ["study-ps-0:2222"],
            "worker": ["study-worker-0:2222", "study-worker-1:2222"],
            "evaluator": ["study-evaluator-0:2222"],
            "chief": ["study-chief-0:2222"],
        }
        assert f"study-{cfg.task_type}-{cfg.task_index}" == container
        assert values(argv, "--network") == ["study"] and values(argv, "--label") == ["pml.job=study"]


def test_each_container_knows_that_the_jobs_5_containers_share_this_machines_cpus(dry_run):
    result, _ = dry_run
    for argv in runs(result.stdout).values():
        assert f"{cpus.TASKS_ON_MACHINE}=5" in values(argv, "-e")


def test_storage_environment_and_the_spec_env_are_passed_by_name(dry_run):
    """No value on a command line (issue 12, item 9): docker takes it from its own environment."""
    result, _ = dry_run
    for argv in runs(result.stdout).values():
        env = [v for v in values(argv, "-e") if not v.startswith("TF_CONFIG=")]
        passed = {v for v in env if "=" not in v}
        assert {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "GOOGLE_CLOUD_PROJECT",
            "STORAGE_EMULATOR_HOST",
            "TF_CPP_MIN_LOG_LEVEL",
            "AWS_REGION",
        } <= passed
        assert "UNRELATED" not in passed and env.count("AWS_REGION") == 1  # the spec's value wins
        job = next(v for v in env if v.startswith("PML_JOB="))
        assert set(env) - passed == {"HOME=/tmp", f"{cpus.TASKS_ON_MACHINE}=5", "PML_IMAGE=parallel-ml:latest", job}
        assert job == f"PML_JOB={result.stdout.split()[1].rstrip(':')}"  # "job NAME: docker containers ..."
    assert {"  TF_CPP_MIN_LOG_LEVEL=1", "  AWS_REGION=eu-west-1"} <= set(result.stdout.splitlines())
    assert "s3cr3t" not in result.stdout and "id-from-host" not in result.stdout


def test_model_dir_is_mounted_at_the_same_path_and_the_trainer_flags_follow_the_image(dry_run):
    result, tmp_path = dry_run
    model_dir = str(tmp_path / "runs" / JOB)
    user = NON_ROOT if os.getuid() == 0 else (os.getuid(), os.getgid())
    for argv in runs(result.stdout).values():
        assert values(argv, "-v") == [f"{model_dir}:{model_dir}"]
        assert values(argv, "--user") == [f"{user[0]}:{user[1]}"]
        assert argv[:4] == ["docker", "run", "--rm", "--init"]
        image = argv.index("parallel-ml:latest")
        assert argv[image + 1 :] == ["--train-examples", "6000", "--epochs", "2", "--model-dir", model_dir]
    assert not (tmp_path / "runs").exists()  # a dry run creates nothing


def test_an_unreachable_docker_daemon_is_unavailable_in_one_line(tmp_path, pml_home):
    """Exit 3 (try again once it runs), not 2: nothing in the command is wrong."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    result = pmlctl("submit", "--target", "docker", "--name", JOB, "--epochs", "1", cwd=tmp_path, env=env)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: cannot reach the Docker daemon at unix://")
    assert len(result.stderr.strip().splitlines()) == 1 and "start dockerd or set DOCKER_HOST" in result.stderr


def test_docker_missing_is_one_line_with_the_fix(tmp_path, pml_home):
    env = {**os.environ, "PML_DOCKER": str(tmp_path / "no-docker")}
    result = pmlctl("submit", "--target", "docker", "--name", JOB, "--epochs", "1", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "docker CLI not found" in result.stderr and "PML_DOCKER" in result.stderr
