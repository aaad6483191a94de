"""`pmlctl` without TensorFlow: help, dry runs and job state (bad input: test_bad_input.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import pmlctl

from pml_trainer.tf_config import parse


def test_help_does_not_import_tensorflow():
    code = (
        "import sys; from deploy.cli import app\n"
        "try:\n    app(['submit', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TF', 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "--workers" in result.stdout and "--checkpoint-every-steps" in result.stdout
    assert result.stdout.strip().endswith("TF False False")


def test_dry_run_shows_every_task_with_its_tf_config_and_starts_nothing(tmp_path, pml_home):
    result = pmlctl(
        "submit",
        "--dry-run",
        "--name",
        "study",
        "--workers",
        "6",
        "--ps",
        "3",
        "--evaluator",
        "--epochs",
        "7",
        "--neurons",
        "64",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    configs = [parse(line.split("TF_CONFIG=", 1)[1]) for line in lines if "TF_CONFIG=" in line]
    tasks = sorted((c.task_type, c.task_index) for c in configs)
    assert tasks == sorted(
        [("chief", 0), ("evaluator", 0)] + [("worker", i) for i in range(6)] + [("ps", i) for i in range(3)]
    )
    cluster = configs[0].cluster
    assert all(c.cluster == cluster for c in configs)
    addresses = [a for tasks in cluster.values() for a in tasks]
    assert len(set(addresses)) == 11 and all(a.startswith("127.0.0.1:") for a in addresses)
    commands = [line for line in lines if line.strip().startswith("command:")]
    assert len(commands) == 11
    assert all(
        "-m pml_trainer" in c
        and "--epochs 7" in c
        and "--neurons 64" in c
        and f"--model-dir {tmp_path}/runs/study" in c
        for c in commands
    )
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


def record(pml_home, name: str, phase: str, tasks: list[dict], target: str = "local", **more) -> dict:
    """A finished job's job.json, as its supervisor writes it (a JobStatus)."""
    state = {
        "name": name,
        "target": target,
        "phase": phase,
        "kind": target,
        "created": "2026-01-01T00:00:00Z",
        "model_dir": "/m",
        "tasks": tasks,
        **more,
    }
    (pml_home / "jobs" / name).mkdir(parents=True)
    (pml_home / "jobs" / name / "job.json").write_text(json.dumps(state))
    return state


def test_status_json_of_a_finished_job(tmp_path, pml_home):
    record(
        pml_home,
        "done",
        "Succeeded",
        [
            {
                "role": "chief",
                "index": 0,
                "phase": "Succeeded",
                "where": "127.0.0.1:1",
                "pid": 1,
                "restarts": 0,
                "exit_code": 0,
                "ended": "by itself",
                "log": str(tmp_path / "chief.log"),
            }
        ],
        exit_code=0,
    )
    (tmp_path / "chief.log").write_text("hello from the chief\n")
    doc = json.loads(pmlctl("status", "done", "-o", "json", cwd=tmp_path).stdout)
    assert (doc["name"], doc["target"], doc["phase"], doc["model_dir"], doc["exit_code"]) == (
        "done",
        "local",
        "Succeeded",
        "/m",
        0,
    )
    assert [(t["role"], t["index"], t["where"], t["pid"], t["exit_code"], t["ended"]) for t in doc["tasks"]] == [
        ("chief", 0, "127.0.0.1:1", 1, 0, "by itself")
    ]
    assert pmlctl("logs", "done", cwd=tmp_path).stdout == "hello from the chief\n"
    table = pmlctl("status", "done", cwd=tmp_path).stdout.splitlines()
    assert table[0].startswith("job done: Succeeded (local, model dir /m), age ")
    assert table[2].split() == ["chief-0", "127.0.0.1:1", "Succeeded", "0", "0", "ended", "by", "itself"]
    assert pmlctl("list", cwd=tmp_path).stdout.splitlines()[1].split()[:3] == ["done", "local", "Succeeded"]


@pytest.mark.parametrize("target", ["local", "docker"])
def test_status_gives_each_failed_tasks_last_error_line(tmp_path, pml_home, target):
    """Exit codes 3 and 4 come with their reason (issue 14, item 3): the last ERROR line of a failed
    task's log (trainer/log.py), else its last line, its message alone if it is a log line."""
    logs = {
        "chief": (
            "2026-12-06T03:00:00.000Z INFO chief-0 loading\n"
            "2026-12-06T03:00:01.000Z ERROR chief-0 --dataset npz:/d.npz: no such file\n"
            "2026-12-06T03:00:01.001Z INFO chief-0 error: is a word here, not the level\n"
            "exiting\n"
        ),
        "worker": "step 1\nRuntimeError: the chief failed for good\n",
        "ps": "serving\n",
        "evaluator": "2026-12-06T03:00:02.000Z INFO evaluator-0 lost a peer (ps-0); exiting for a restart\n",
    }
    for role, text in logs.items():
        (tmp_path / f"{role}.log").write_text(text)
    codes = {"chief": 3, "worker": 4, "ps": 0, "evaluator": 175}
    record(
        pml_home,
        "broken",
        "Failed",
        [
            {
                "role": role,
                "index": 0,
                "phase": "Succeeded" if code == 0 else "Failed",
                "where": f"h:{i}",
                "pid": 1,
                "exit_code": code,
                "ended": "by itself",
                "log": str(tmp_path / f"{role}.log"),
            }
            for i, (role, code) in enumerate(codes.items())
        ],
        target=target,
        exit_code=3,
    )
    rows = {line.split()[0]: line for line in pmlctl("status", "broken", cwd=tmp_path).stdout.splitlines()[2:]}
    assert rows["chief-0"].endswith("  error: --dataset npz:/d.npz: no such file")
    assert rows["worker-0"].endswith("  RuntimeError: the chief failed for good")
    assert rows["ps-0"].endswith("  ended by itself")
    assert rows["evaluator-0"].endswith("  lost a peer (ps-0); exiting for a restart")  # the message alone
    doc = json.loads(pmlctl("status", "broken", "-t", target, "-o", "json", cwd=tmp_path).stdout)
    assert [t["message"] for t in doc["tasks"]] == [
        "error: --dataset npz:/d.npz: no such file",
        "RuntimeError: the chief failed for good",
        "",
        "lost a peer (ps-0); exiting for a restart",
    ]
    waited = pmlctl("wait", "broken", cwd=tmp_path)
    assert waited.returncode == 1
    assert waited.stderr.splitlines()[-1] == (
        "error: job broken failed (exit code 3): chief-0: error: --dataset npz:/d.npz: no such file"
    )


def test_the_flowers_preset_gives_the_study_s_setup_and_flags_override_it(tmp_path, pml_home):
    def command(*args):
        result = pmlctl(
            "submit", "--dry-run", "--preset", "flowers-cnn", "--workers", "0", "--ps", "0", *args, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        return next(line for line in result.stdout.splitlines() if "command:" in line).split()

    preset = command()
    for flag, value in [("--dataset", "flowers"), ("--model", "cnn"), ("--batch-size", "32"), ("--augment", "True")]:
        assert preset[preset.index(flag) + 1] == value
    assert "--augment" not in command("--no-augment")  # back to the default, so not passed at all
