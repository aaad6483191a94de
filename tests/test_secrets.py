"""Issue 12, item 9: a secret in a job's env is never printed, logged, saved or put on a command line.

The Kubernetes target refuses literal credentials; the local and docker targets accept them in
`env` (a test server's key in a job file), so they must keep them out of sight: the dry runs hide
them, docker gets them by name from its own environment, job.json and the logs never hold them.
"""

from __future__ import annotations

import os
import pathlib
import stat

from conftest import pmlctl

from deploy import redact

SECRET = "s3cr3t-Value-9"
JOB_FILE = (
    f"env:\n  AWS_SECRET_ACCESS_KEY: {SECRET}\n  WANDB_API_KEY: {SECRET}-2\n"
    f"  DATABASE_URL: postgres://me:{SECRET}@db:5432/x\n  TF_CPP_MIN_LOG_LEVEL: '1'\n"
)


def write_job(tmp_path: pathlib.Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB_FILE)


def test_local_dry_run_hides_secret_values_and_shows_the_rest(tmp_path, pml_home):
    write_job(tmp_path)
    result = pmlctl("submit", "--dry-run", "-f", "job.yaml", "--workers", "1", "--ps", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    lines = set(result.stdout.splitlines())
    assert {
        "  env AWS_SECRET_ACCESS_KEY=<hidden>",
        "  env WANDB_API_KEY=<hidden>",
        "  env DATABASE_URL=postgres://me:<hidden>@db:5432/x",
        "  env TF_CPP_MIN_LOG_LEVEL=1",
    } <= lines


def test_docker_dry_run_passes_the_spec_env_by_name_and_hides_secret_values(tmp_path, pml_home):
    write_job(tmp_path)
    result = pmlctl(
        "submit",
        "-t",
        "docker",
        "--dry-run",
        "-f",
        "job.yaml",
        "--name",
        "sec",
        "--workers",
        "1",
        "--ps",
        "0",
        cwd=tmp_path,
        env={**os.environ, "PML_DOCKER": "docker"},
    )
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    runs = [line for line in result.stdout.splitlines() if line.startswith("  docker run ")]
    assert len(runs) == 2 and all(" -e AWS_SECRET_ACCESS_KEY " in run for run in runs)
    assert "  AWS_SECRET_ACCESS_KEY=<hidden>" in result.stdout.splitlines()


FAKE_DOCKER = """#!/bin/sh
# A docker CLI that answers what the supervisor asks, and records each `docker run`:
# its command line (what `ps` shows) and the value it would pass for `-e AWS_SECRET_ACCESS_KEY`.
case "$1" in
  version) echo 20.10.24 ;;
  run) printf '%s\\n' "$@" > "$RECORD/argv.$$"; printf '%s' "$AWS_SECRET_ACCESS_KEY" > "$RECORD/value.$$" ;;
esac
exit 0
"""


def test_docker_job_puts_no_secret_on_a_command_line_nor_in_job_state_or_logs(tmp_path, pml_home):
    """The docker CLI's command line is world-readable (/proc/PID/cmdline); its environment is not."""
    write_job(tmp_path)
    record = tmp_path / "record"
    record.mkdir()
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    result = pmlctl(
        "submit",
        "-t",
        "docker",
        "-f",
        "job.yaml",
        "--name",
        "sec",
        "--workers",
        "1",
        "--ps",
        "0",
        cwd=tmp_path,
        env={**os.environ, "PML_DOCKER": str(docker), "RECORD": str(record)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    argvs = sorted(record.glob("argv.*"))
    assert len(argvs) == 2  # the chief and the worker
    for argv in argvs:
        assert SECRET not in argv.read_text()
        assert "AWS_SECRET_ACCESS_KEY" in argv.read_text().splitlines()  # by name
    # ...and docker finds the value in its own environment, so the container gets it.
    assert {v.read_text() for v in record.glob("value.*")} == {SECRET}
    saved = [p.read_text(errors="replace") for p in (pml_home / "jobs" / "sec").iterdir()]
    assert saved and not any(SECRET in text for text in saved)
    assert SECRET not in result.stdout + result.stderr


def test_a_refused_secret_value_is_not_echoed_in_the_error(tmp_path, pml_home):
    (tmp_path / "job.yaml").write_text("env:\n  AWS_SECRET_ACCESS_KEY: 918273645\n")  # a number, not a string
    result = pmlctl("submit", "--dry-run", "-f", "job.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "env.AWS_SECRET_ACCESS_KEY" in result.stderr and "918273645" not in result.stderr


def test_the_rule_for_secret_names_and_url_passwords():
    hidden = [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SESSION_TOKEN",
        "GITHUB_TOKEN",
        "WANDB_API_KEY",
        "DB_PASSWORD",
        "MYSQL_PASSWD",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "HTTP_AUTH",
        "private_key",
    ]
    shown = ["AWS_REGION", "AWS_ENDPOINT_URL", "TF_CPP_MIN_LOG_LEVEL", "STORAGE_EMULATOR_HOST", "HOME"]
    assert [n for n in hidden if redact.value(n, "v") != redact.HIDDEN] == []
    assert [n for n in shown if redact.value(n, "v") != "v"] == []
    assert redact.text("x https://u:p%40ss@h:1/a and s3://b/k") == f"x https://u:{redact.HIDDEN}@h:1/a and s3://b/k"
    assert redact.text("http://user@h/") == "http://user@h/"  # no password, nothing to hide
