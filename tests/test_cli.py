"""`pmlctl` without TensorFlow: help, dry runs and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import pmlctl
from trainer.tf_config import parse


def test_help_does_not_import_tensorflow():
    code = ("import sys; from deploy.cli import app\n"
            "try:\n    app(['submit', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TF', 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "--workers" in result.stdout and "--checkpoint-every-steps" in result.stdout
    assert result.stdout.strip().endswith("TF False False")


def test_dry_run_shows_every_task_with_its_tf_config_and_starts_nothing(tmp_path, pml_home):
    result = pmlctl("submit", "--dry-run", "--name", "study", "--workers", "6", "--ps", "3", "--evaluator",
                    "--epochs", "7", "--neurons", "64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    configs = [parse(line.split("TF_CONFIG=", 1)[1]) for line in lines if "TF_CONFIG=" in line]
    tasks = sorted((c.task_type, c.task_index) for c in configs)
    assert tasks == sorted([("chief", 0), ("evaluator", 0)] + [("worker", i) for i in range(6)]
                           + [("ps", i) for i in range(3)])
    cluster = configs[0].cluster
    assert all(c.cluster == cluster for c in configs)
    addresses = [a for tasks in cluster.values() for a in tasks]
    assert len(set(addresses)) == 11 and all(a.startswith("127.0.0.1:") for a in addresses)
    commands = [line for line in lines if line.strip().startswith("command:")]
    assert len(commands) == 11
    assert all("-m trainer" in c and "--epochs 7" in c and "--neurons 64" in c
               and f"--model-dir {tmp_path}/runs/study" in c for c in commands)
    assert not (tmp_path / "runs").exists() and not pml_home.exists()


def test_job_file_with_flags_winning(tmp_path, pml_home):
    job = tmp_path / "job.yaml"
    job.write_text("name: fromfile\nreplicas: {workers: 3, ps: 2}\ntrainer: {epochs: 9, neurons: 32}\n")
    result = pmlctl("submit", "-f", str(job), "--dry-run", "--ps", "1", "--epochs", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    configs = [parse(line.split("TF_CONFIG=", 1)[1]) for line in result.stdout.splitlines() if "TF_CONFIG=" in line]
    assert len(configs[0].cluster["worker"]) == 3 and len(configs[0].cluster["ps"]) == 1
    assert "job fromfile" in result.stdout
    assert "--epochs 2" in result.stdout and "--neurons 32" in result.stdout and "--epochs 9" not in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["--epochs", "0"], "--epochs (trainer.epochs): Input should be greater than or equal to 1"),
    (["--workers", "-1"], "--workers (replicas.workers): Input should be greater than or equal to 0"),
    (["--workers", "0", "--ps", "2"], "ps need at least one worker"),
    (["--name", "Bad_Name"], "name: must be lowercase letters"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--model", "rnn"], "--model (trainer.model): Input should be 'mlp' or 'cnn'"),
    (["--target", "mars"], "--target mars: unknown target"),
    (["-f", "missing.yaml"], "-f missing.yaml: no such file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, pml_home, args, expected):
    result = pmlctl("submit", "--dry-run", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    assert not pml_home.exists() and not (tmp_path / "runs").exists()


def test_bad_job_file_is_one_line(tmp_path, pml_home):
    job = tmp_path / "job.yaml"
    job.write_text("replicas: {workers: 2\n")
    result = pmlctl("submit", "-f", str(job), "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "not valid YAML at line" in result.stderr
    job.write_text("trainer: {epochz: 3}\n")
    result = pmlctl("submit", "-f", str(job), "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and "trainer.epochz: unknown field" in result.stderr


def test_status_logs_and_delete_of_an_unknown_job(tmp_path, pml_home):
    for command in ("status", "logs"):
        result = pmlctl(command, "nosuchjob", cwd=tmp_path)
        assert result.returncode == 2 and "job nosuchjob not found" in result.stderr
    result = pmlctl("delete", "nosuchjob", cwd=tmp_path)
    assert result.returncode == 0 and "nothing to delete" in result.stdout


def test_trainer_flag_errors_name_the_flag(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trainer", "--batch-size", "lots"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: --batch-size: Input should be a valid integer") and "'lots'" in result.stderr
    result = subprocess.run([sys.executable, "-m", "trainer", "--no-such-flag", "1"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "unrecognized arguments: --no-such-flag" in result.stderr


def test_status_json_of_a_finished_job(tmp_path, pml_home):
    state = {"name": "done", "target": "local", "status": "succeeded", "model_dir": "/m", "tasks": [
        {"role": "chief", "index": 0, "address": "127.0.0.1:1", "pid": 1, "restarts": 0, "exit_code": 0,
         "ended": "by itself", "log": str(tmp_path / "chief.log")}]}
    (pml_home / "jobs" / "done").mkdir(parents=True)
    (pml_home / "jobs" / "done" / "job.json").write_text(json.dumps(state))
    (tmp_path / "chief.log").write_text("hello from the chief\n")
    assert json.loads(pmlctl("status", "done", "-o", "json", cwd=tmp_path).stdout) == state
    assert pmlctl("logs", "done", cwd=tmp_path).stdout == "hello from the chief\n"
    table = pmlctl("status", "done", cwd=tmp_path).stdout
    assert "job done: succeeded" in table and "chief-0" in table
    assert "done" in pmlctl("list", cwd=tmp_path).stdout
