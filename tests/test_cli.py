"""`pmlctl` without TensorFlow: help, dry runs and job state (bad input: test_bad_input.py)."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_delete_of_an_unknown_job_is_not_an_error(tmp_path, pml_home):
    result = pmlctl("delete", "nosuchjob", cwd=tmp_path)
    assert result.returncode == 0 and "nothing to delete" in result.stdout


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


def test_the_flowers_preset_gives_the_study_s_setup_and_flags_override_it(tmp_path, pml_home):
    def command(*args):
        result = pmlctl("submit", "--dry-run", "--preset", "flowers-cnn", "--workers", "0", "--ps", "0", *args,
                        cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return next(line for line in result.stdout.splitlines() if "command:" in line).split()

    preset = command()
    for flag, value in [("--dataset", "flowers"), ("--model", "cnn"), ("--batch-size", "32"), ("--augment", "True")]:
        assert preset[preset.index(flag) + 1] == value
    assert "--augment" not in command("--no-augment")  # back to the default, so not passed at all
