"""The target contract (deploy/target.py) and the one rule of where a command goes (deploy/registry.py).

`MemoryTarget` is a whole target written here, in the test file only: registered with one entry,
it takes `-t memory` and its own flag, and every job command reaches it through `pmlctl`. The
local target's `delete` is driven with stand-in tasks that print a gRPC dump on SIGTERM, as
TensorFlow's servers do when their peers go.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from conftest import alive, wait_for
from conftest import pmlctl as run_pmlctl
from typer.testing import CliRunner

from deploy import registry
from deploy.cli import app
from deploy.spec import JobSpec
from deploy.target import RUNNING, SUCCEEDED, Handle, HoldsJob, JobList, JobStatus, Option, Plan, Target, TaskStatus
from pml_trainer.errors import BadInput


@dataclass
class MemoryPlan(Plan):
    spec: JobSpec
    steps: int

    def describe(self) -> str:
        return f"job {self.spec.name}: in memory, {self.steps} step(s) per look"


class MemoryTarget(Target):
    """Jobs that are records in this process: each look at one makes `--steps` steps, and it
    succeeds at step 3."""

    name = "memory"
    summary = "records in this process's memory (a test's)"
    options = (Option("steps", int, "Steps a job makes each time its status is read.", default=1, minimum=1),)
    poll_seconds = 0.0
    jobs: ClassVar[dict[str, JobStatus]] = {}
    steps: ClassVar[dict[str, int]] = {}

    @classmethod
    def knows(cls, name: str) -> HoldsJob:
        return "yes" if name in cls.jobs else "no"

    def plan(self, spec: JobSpec, options: dict[str, Any], cpus: list[int] | None = None) -> MemoryPlan:
        return MemoryPlan(spec, options["steps"])

    def submit(self, plan: MemoryPlan) -> Handle:
        cluster = plan.spec.replicas.cluster(lambda role, index: f"{role}-{index}")
        tasks = [
            TaskStatus(role, i, RUNNING, address)
            for role, addresses in cluster.items()
            for i, address in enumerate(addresses)
        ]
        self.jobs[plan.spec.name] = JobStatus(
            plan.spec.name, self.name, RUNNING, "memory", tasks=tasks, details={"step": 0, "steps": plan.steps}
        )
        return self.handle(plan.spec.name, {})

    def handle(self, name: str, options: dict[str, Any]) -> Handle:
        return Handle(self.name, name, place="in memory")

    def status(self, handle: Handle) -> JobStatus:
        if handle.name not in self.jobs:
            raise BadInput(f"job {handle.name} not found in memory")
        job = self.jobs[handle.name]
        job.details["step"] += job.details["steps"]
        if job.details["step"] >= 3:
            job.phase = SUCCEEDED
            for task in job.tasks:
                task.phase, task.exit_code = SUCCEEDED, 0
        return job

    def logs(self, handle: Handle, role: str | None, index: int, follow: bool) -> Iterator[bytes]:
        job = self.status(handle)
        yield f"{role or 'chief'}-{index} of {job.name} at step {job.details['step']}\n".encode()

    def delete(self, handle: Handle) -> str | None:
        return "its record" if self.jobs.pop(handle.name, None) else None

    def list(self, options: dict[str, Any]) -> JobList:
        return JobList(self.name, "in memory", list(self.jobs.values()))


@pytest.fixture
def memory(monkeypatch, pml_home):
    """The one registry entry a new target needs."""
    monkeypatch.setitem(registry.TARGETS, "memory", f"{__name__}:MemoryTarget")
    monkeypatch.setattr(MemoryTarget, "jobs", {})


def pmlctl(*args: str):
    return CliRunner().invoke(app, list(args))


def test_a_target_written_in_a_test_file_takes_every_job_command(memory):
    submitted = pmlctl("submit", "-t", "memory", "--name", "m1", "--workers", "1", "--ps", "0", "--steps", "2")
    assert submitted.exit_code == 0, submitted.output
    assert submitted.stdout == "job m1 submitted in memory; follow it with `pmlctl status m1 -t memory`\n"

    shown = pmlctl("status", "m1")  # no -t: the target that holds the name
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("job m1: Running (memory), age ")
    assert [line.split()[:4] for line in lines[2:]] == [
        ["chief-0", "chief-0", "Running", "0"],
        ["worker-0", "worker-0", "Running", "0"],
    ]
    assert json.loads(pmlctl("status", "m1", "-o", "json").stdout)["details"]["step"] == 2 + 2

    assert pmlctl("logs", "m1", "--role", "worker").stdout == "worker-0 of m1 at step 6\n"
    assert pmlctl("list", "-t", "memory").stdout.splitlines()[1].split()[:3] == ["m1", "memory", "Succeeded"]

    waited = pmlctl("wait", "m1")
    assert waited.exit_code == 0 and waited.stderr == "job m1: Succeeded\n" and waited.stdout == "job m1 succeeded\n"

    deleted = pmlctl("delete", "m1")
    assert deleted.exit_code == 0 and deleted.stdout == "job m1 deleted: its record\n"
    assert pmlctl("delete", "m1", "-t", "memory").stdout == "job m1 not found in memory; nothing to delete\n"
    assert MemoryTarget.jobs == {}


def test_the_wait_of_a_new_target_follows_its_phases(memory):
    assert pmlctl("submit", "-t", "memory", "--name", "slow", "--workers", "0", "--ps", "0").exit_code == 0
    waited = pmlctl("wait", "slow")  # 1 step per look: Running, Running, Succeeded
    assert waited.exit_code == 0 and waited.stderr == "job slow: Running\njob slow: Succeeded\n"


def plugin(folder, target: str) -> None:
    """An installed package in `folder` that declares `target` (module:Class) as the target memory
    through an entry point, as `pip install` leaves one."""
    info = folder / "pml_memory-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pml-memory\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{registry.GROUP}]\nmemory = {target}\n")


def test_a_target_from_an_entry_point_takes_jobs_without_an_edit_of_the_registry(tmp_path, monkeypatch, pml_home):
    plugin(tmp_path / "site", f"{__name__}:MemoryTarget")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(MemoryTarget, "jobs", {})
    assert "memory" not in registry.TARGETS
    submitted = pmlctl("submit", "-t", "memory", "--name", "p1", "--workers", "0", "--ps", "0", "--steps", "2")
    assert submitted.exit_code == 0, submitted.output
    shown = pmlctl("status", "p1")  # no -t: the plugin holds the name
    assert shown.exit_code == 0 and shown.stdout.startswith("job p1: Running (memory), age "), shown.output
    assert "Options of -t memory:" in pmlctl("submit", "--help").stdout


def test_a_broken_entry_point_is_one_line_naming_it(tmp_path, pml_home):
    plugin(tmp_path / "site", "no_such_module:Target")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    result = run_pmlctl("status", "x", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (
        f"error: entry point memory = no_such_module:Target (group {registry.GROUP}) cannot be "
        "loaded (ModuleNotFoundError: No module named 'no_such_module'); fix or uninstall the "
        "package that declares it\n"
    )


def test_a_new_targets_flags_are_its_own_and_show_under_its_name(memory):
    help_text = pmlctl("submit", "--help").stdout
    assert "Options of -t memory:\n  --steps " in help_text  # then the metavar, in the words of typer's click
    assert "memory, records in this process's memory (a test's)" in " ".join(help_text.split())
    refused = pmlctl("submit", "-t", "local", "--steps", "2", "--dry-run")
    assert refused.exit_code == 2
    assert refused.stderr == "error: --steps is an option of -t memory, not of -t local; drop it or pass -t memory\n"
    # Its flag alone says where the job goes; the dry run is the target's own.
    dry = pmlctl("submit", "--steps", "2", "--name", "m2", "--dry-run")
    assert dry.exit_code == 0 and dry.stdout == "job m2: in memory, 2 step(s) per look\n"
    assert MemoryTarget.jobs == {}


def test_an_unknown_target_lists_the_registered_ones(memory):
    result = pmlctl("status", "x", "-t", "mars")
    assert result.exit_code == 2
    assert "--target mars: unknown target; use local, docker, k8s or memory" in result.stderr


def test_flags_of_two_targets_are_refused_together(memory):
    result = pmlctl("submit", "--steps", "2", "--max-restarts", "1", "--dry-run")
    assert result.exit_code == 2 and result.stderr == (
        "error: --max-restarts (-t local or docker), --steps (-t memory): no target takes all of these; "
        "pass the options of one target\n"
    )


# Where a command goes without -t: the status of a docker job, and the default.


def docker_record(pml_home, name: str) -> None:
    (pml_home / "jobs" / name).mkdir(parents=True)
    (pml_home / "jobs" / name / "job.json").write_text(
        json.dumps(
            {
                "name": name,
                "target": "docker",
                "phase": "Succeeded",
                "kind": "docker",
                "model_dir": "/m",
                "exit_code": 0,
                "tasks": [
                    {"role": "chief", "index": 0, "phase": "Succeeded", "where": f"{name}-chief-0:2222", "exit_code": 0}
                ],
            }
        )
    )


def test_status_of_a_docker_job_with_and_without_t_docker(pml_home):
    docker_record(pml_home, "boxed")
    for args in (["-t", "docker"], []):
        shown = pmlctl("status", "boxed", *args)
        assert shown.exit_code == 0, shown.output
        assert shown.stdout.splitlines()[0].startswith("job boxed: Succeeded (docker, model dir /m)")
        assert shown.stdout.splitlines()[2].split()[:3] == ["chief-0", "boxed-chief-0:2222", "Succeeded"]
    elsewhere = pmlctl("status", "boxed", "-t", "local")
    assert elsewhere.exit_code == 2 and elsewhere.stderr.startswith("error: job boxed not found")
    assert pmlctl("list").stdout.splitlines()[1].split()[:3] == ["boxed", "docker", "Succeeded"]
    assert pmlctl("list", "-t", "local").stdout.startswith(
        "no jobs on this machine: submit one with `pmlctl submit -t local`"
    )


def test_the_runs_of_an_experiment_are_listed_under_its_name(pml_home):
    for name, phase in [("cmp-0-0", "Succeeded"), ("cmp-1-0", "Failed"), ("solo", "Running")]:
        (pml_home / "jobs" / name).mkdir(parents=True)
        (pml_home / "jobs" / name / "job.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "target": "docker",
                    "phase": phase,
                    "kind": "docker",
                    "tasks": [],
                    "experiment": None if name == "solo" else "cmp",
                    "details": {"supervisor_pid": os.getpid()},
                }
            )
        )
    rows = [line.split(maxsplit=4) for line in pmlctl("list").stdout.splitlines()[1:]]
    assert [r[:3] for r in rows] == [["solo", "docker", "Running"], ["cmp", "docker", "Failed"]]
    assert rows[1][4] == "experiment: 2 runs (1 Succeeded, 1 Failed); `pmlctl list --runs` shows them"
    runs = [line.split(maxsplit=4) for line in pmlctl("list", "--runs").stdout.splitlines()[1:]]
    assert [(r[0], r[2], r[4:]) for r in runs] == [
        ("cmp-0-0", "Succeeded", ["run of cmp"]),
        ("cmp-1-0", "Failed", ["run of cmp"]),
        ("solo", "Running", []),
    ]


def test_render_takes_the_study_presets():
    """render built its spec by hand, so it had no --preset."""
    result = pmlctl("render", "--preset", "flowers-cnn", "--name", "flowers", "--values")
    assert result.exit_code == 0, result.output
    import yaml

    values = yaml.safe_load(result.stdout)
    assert {k: values["trainer"][k] for k in ("dataset", "model", "augment", "batch_size")} == {
        "dataset": "flowers",
        "model": "cnn",
        "augment": True,
        "batch_size": 32,
    }


# `pmlctl delete` of a running local job, with stand-in tasks.


STAND_IN = """
import os, pathlib, signal, sys

def farewell(*_):  # what TensorFlow's servers print when their peers go
    for i in range(20):
        print(f"E0000 grpc_server_lib.cc:{i}] UNAVAILABLE: Socket closed", flush=True)
    sys.exit(143)

signal.signal(signal.SIGTERM, farewell)
print("step 1", flush=True)
pathlib.Path(os.environ["READY"], str(os.getpid())).touch()
while True:
    signal.pause()
"""


def test_delete_of_a_running_local_job_returns_when_every_process_is_gone(tmp_path, pml_home):
    """Before: "deleted" while 4 tasks ran; the job came back as interrupted; the submitting terminal
    filled with gRPC errors."""
    (tmp_path / "stand-in" / "pml_trainer").mkdir(parents=True)
    (tmp_path / "stand-in" / "pml_trainer" / "__main__.py").write_text(STAND_IN)
    ready = tmp_path / "ready"
    ready.mkdir()
    (tmp_path / "job.yaml").write_text(
        json.dumps({"env": {"PYTHONPATH": str(tmp_path / "stand-in"), "READY": str(ready)}})
    )
    job = subprocess.Popen(
        [sys.executable, "-m", "deploy", "submit", "--name", "doomed", "-f", "job.yaml", "--workers", "2", "--ps", "1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids = wait_for(
        lambda: len(list(ready.iterdir())) == 4 and [int(p.name) for p in ready.iterdir()],
        60,
        "the 4 tasks to start",
        job,
    )
    supervisor = json.loads((pml_home / "jobs" / "doomed" / "job.json").read_text())["details"]["supervisor_pid"]

    deleted = run_pmlctl("delete", "doomed", cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.startswith("job doomed deleted: every task stopped")
    assert [pid for pid in [supervisor, *pids] if alive(pid)] == []  # when delete returned, not later
    assert not (pml_home / "jobs" / "doomed").exists()

    output, errors = job.communicate(timeout=60)
    assert job.returncode == 130
    assert errors == "error: job doomed was deleted (`pmlctl delete`); every task of it is stopped\n"
    assert "UNAVAILABLE" not in output and "interrupted" not in output
    assert "no jobs" in run_pmlctl("list", cwd=tmp_path).stdout  # it did not come back


def test_submitting_a_running_jobs_name_again_is_refused(tmp_path, pml_home):
    (pml_home / "jobs" / "busy").mkdir(parents=True)
    (pml_home / "jobs" / "busy" / "job.json").write_text(
        json.dumps(
            {
                "name": "busy",
                "target": "local",
                "phase": "Running",
                "kind": "local",
                "tasks": [],
                "details": {"supervisor_pid": os.getpid()},
            }
        )
    )
    result = pmlctl("submit", "--name", "busy", "--workers", "0", "--ps", "0")
    assert result.exit_code == 2
    assert result.stderr == "error: job busy is already running; pick another --name or `pmlctl delete busy`\n"


def test_a_local_job_whose_supervisor_vanished_is_failed_not_running(pml_home):
    (pml_home / "jobs" / "lost").mkdir(parents=True)
    (pml_home / "jobs" / "lost" / "job.json").write_text(
        json.dumps(
            {
                "name": "lost",
                "target": "local",
                "phase": "Running",
                "kind": "local",
                "tasks": [],
                "details": {"supervisor_pid": 2**22 + 1},
            }
        )
    )  # above pid_max's default: no such process
    shown = pmlctl("status", "lost")
    assert shown.stdout.startswith("job lost: Failed (local)")
    assert "its supervisor (pid 4194305) ended without a word" in shown.stderr
    assert pmlctl("wait", "lost").exit_code == 1


def test_the_job_command_line_has_no_target_branch():
    """The bar of issue 13: cli.py routes through the registry only."""
    import deploy.cli

    source = open(deploy.cli.__file__).read()
    assert "selected(" not in source
    assert not [t for t in registry.names() if f'"{t}"' in source]


# Issue 26, item 11: a name found nowhere says where it was looked for, and which cluster was never asked.


@pytest.mark.parametrize("command", ["status", "logs", "wait"])
def test_a_name_found_nowhere_says_no_cluster_was_asked_and_why(pml_home, tmp_path, monkeypatch, command):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shown = pmlctl(command, "demo")
    assert shown.exit_code == 2
    line = shown.stderr.strip()
    assert line.startswith("error: job demo not found: no job of that name in -t local or -t docker"), line
    assert (
        f"-t k8s was not asked: no kubeconfig at {tmp_path / 'home' / '.kube' / 'config'} (KUBECONFIG is not set)"
        in line
    )
    assert "\n" not in line


def test_a_name_found_nowhere_names_the_kubeconfig_that_is_missing(pml_home, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nosuch"))
    line = pmlctl("status", "demo").stderr.strip()
    assert f"-t k8s was not asked: no kubeconfig at KUBECONFIG={tmp_path / 'nosuch'};" in line, line


def test_deleting_a_name_found_nowhere_is_still_nothing_to_delete(pml_home, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nosuch"))
    assert "job demo not found" in pmlctl("delete", "demo").output
