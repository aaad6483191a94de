"""How a task module reaches each target (deploy/workspaces.py): the workspace pmlctl finds for
`--task`, the snapshot every local task runs on (restarts included), the task image the docker and
k8s targets run, and sweeps over task parameters. Nothing here starts TensorFlow or Docker."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import yaml
from conftest import pmlctl as run_pmlctl
from conftest import shared_dir
from test_k8s import crd, kube  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from deploy import netns, registry, task_deps, task_image, workspaces
from deploy.cli import app
from deploy.local import LocalTarget
from deploy.render import objects
from deploy.spec import JobSpec
from deploy.target import SUCCEEDED, Handle, HoldsJob, JobList, JobStatus, Plan, Target, TaskStatus
from pml_trainer import workspace

CRD = str(shared_dir() / "schemas" / "kubeflow.org_tfjobs.yaml")


@pytest.fixture
def project(tmp_path, monkeypatch, pml_home) -> pathlib.Path:
    """A user's folder with a task file and a package, the current folder, and a cache of snapshots."""
    root = tmp_path / "project"
    (root / "mypkg").mkdir(parents=True)
    (root / "t.py").write_text("VERSION = 1\n")
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "task.py").write_text("")
    monkeypatch.chdir(root)
    monkeypatch.setenv(workspace.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setenv("PML_DOCKER", str(tmp_path / "no-docker"))  # nothing here may build or run an image
    return root


def pmlctl(*args: str):
    return CliRunner().invoke(app, list(args))


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


def resolved(trainer: dict[str, Any], flags: set[str], job_file: pathlib.Path | None = None) -> tuple[str, str]:
    spec = workspaces.resolve(JobSpec(trainer=trainer), dict.fromkeys(flags), job_file)
    return spec.trainer.workspace, spec.trainer.task


# --- which folder is the workspace -----------------------------------------------------------------


def test_the_workspace_defaults_to_the_task_files_folder_or_the_current_one(project, tmp_path):
    (project / "sub").mkdir()
    (project / "sub" / "s.py").write_text("")
    assert resolved({"task": "t.py"}, {"task"}) == (str(project), "t.py")
    assert resolved({"task": "sub/s.py"}, {"task"}) == (str(project / "sub"), "s.py")
    assert resolved({"task": "mypkg.task"}, {"task"}) == (str(project), "mypkg.task")
    # With --workspace, a FILE is named from here, or else found in the workspace.
    assert resolved({"task": "sub/s.py", "workspace": "."}, {"task", "workspace"}) == (str(project), "sub/s.py")
    assert resolved({"task": "s.py", "workspace": "sub"}, {"task", "workspace"}) == (str(project / "sub"), "s.py")
    assert resolved({"task": "task", "workspace": "mypkg"}, {"task", "workspace"}) == (str(project / "mypkg"), "task")


def test_a_job_files_paths_are_read_from_its_own_folder(project, tmp_path, monkeypatch):
    job = project / "jobs" / "job.yaml"
    job.parent.mkdir()
    monkeypatch.chdir(tmp_path)  # elsewhere: the job file's paths do not depend on it
    assert resolved({"task": "t.py", "workspace": ".."}, set(), job) == (str(project), "t.py")
    assert resolved({"task": "../t.py"}, set(), job) == (str(project), "t.py")
    # A flag is still read from the current folder.
    assert resolved({"task": "project/t.py", "workspace": ".."}, {"task"}, job) == (str(project), "t.py")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--task", "nothere.py"], "--task nothere.py: no such file in "),
        (["--task", "../outside.py", "--workspace", "."], "is not inside workspace"),
        (["--task", "mypkg.missing"], "neither mypkg/missing.py nor mypkg/missing/__init__.py is in workspace"),
        (["--task", "t.py", "--workspace", "nowhere"], "--workspace nowhere: no such folder"),
        (["--workspace", "."], "--workspace .: give --task too"),
        (["--task", "ignored.py"], "ignored.py is left out of workspace"),
        (["--task", "t.py", "--task-param", "units"], "--task-param 'units': write it as KEY=VALUE"),
    ],
)
def test_a_task_that_cannot_be_shipped_is_one_line(project, tmp_path, args, said):
    (tmp_path / "outside.py").write_text("")
    (project / "ignored.py").write_text("")
    (project / ".pmlignore").write_text("ignored.py\n")
    for command in (["submit", "--dry-run"], ["render", "--no-validate"]):
        assert said in one_error_line(pmlctl(*command, *args))


def test_pmlctl_refuses_a_secret_in_the_workspace_in_one_line_with_exit_2(project):
    (project / ".env").write_text("TOKEN=abc\n")
    result = run_pmlctl("submit", "--dry-run", "--task", "t.py", cwd=project, timeout=60)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: workspace {project}: .env looks like a secret, which would be shipped with the code; "
        f"{workspace.SECRET_HELP}"
    ]


# --- local: the snapshot ---------------------------------------------------------------------------


def test_the_dry_run_names_the_snapshot_every_task_runs_on_without_copying(project, tmp_path):
    result = pmlctl("submit", "--dry-run", "--task", "t.py", "--task-param", "units=16", "--workers", "1", "--ps", "0")
    assert result.exit_code == 0, result.output
    snapshot = workspace.snapshot_path(workspace.digest(project))
    commands = [line for line in result.stdout.splitlines() if line.startswith("  command: ")]
    assert len(commands) == 2
    for line in commands:
        argv = shlex.split(line.removeprefix("  command: "))
        assert argv[argv.index("--workspace") + 1] == str(snapshot) and argv[argv.index("--task") + 1] == "t.py"
        assert argv[argv.index("--task-param") + 1] == "units=16"
    assert f"its read-only snapshot {snapshot} (copied at submit)" in result.stdout
    assert not (tmp_path / "cache").exists()


def test_an_unmet_requirement_refuses_a_local_job_with_the_pip_command(project):
    (project / "requirements.txt").write_text("surely-not-a-package-pml>=1\n")
    line = one_error_line(pmlctl("submit", "--dry-run", "--task", "t.py"))
    assert "surely-not-a-package-pml>=1 is not installed" in line
    assert f"`{sys.executable} -m pip install -r {project / 'requirements.txt'}`" in line


# Stands in for the trainer: imports the task from --workspace, as the trainer does, and says which
# code it ran. Its first start edits the user's file, as a user would during a job, and exits as a
# preempted chief does (143); the supervisor restarts it.
CHIEF = """
import importlib, os, pathlib, sys
args = sys.argv[1:]
sys.path.insert(0, args[args.index("--workspace") + 1])
task = importlib.import_module(args[args.index("--task") + 1].removesuffix(".py"))
record = pathlib.Path(os.environ["RECORD"])
with open(record, "a") as f:
    f.write(f"{task.VERSION} {task.__file__}\\n")
if len(record.read_text().splitlines()) == 1:
    pathlib.Path(os.environ["SOURCE"]).write_text("VERSION = 2\\n")
    sys.exit(143)
"""


def test_a_restarted_chief_runs_the_code_of_its_submit_not_the_edited_file(project, tmp_path, monkeypatch):
    monkeypatch.setenv(netns.MODE_VARIABLE, "host")  # the stand-in listens nowhere
    record = tmp_path / "record"
    spec = JobSpec(
        name="edited",
        replicas={"workers": 0, "ps": 0},
        trainer={"task": "t.py", "workspace": str(project)},
        env={"RECORD": str(record), "SOURCE": str(project / "t.py")},
    )
    target = LocalTarget()
    plan = target.plan(spec, {"max_restarts": 2, "verbose": False})
    (chief,) = plan.tasks
    assert chief.argv[1:4] == ["-u", "-m", "pml_trainer"]
    chief.argv = [sys.executable, "-c", CHIEF, *chief.argv[4:]]
    snapshot = workspace.snapshot_path(workspace.digest(project))
    assert not snapshot.exists()

    outcome = target.wait(target.submit(plan), 120)

    assert outcome.phase == SUCCEEDED, outcome.message
    assert (project / "t.py").read_text() == "VERSION = 2\n"  # edited during the job...
    ran = [line.split() for line in record.read_text().splitlines()]
    assert ran == [["1", str(snapshot / "t.py")]] * 2  # ...and both starts ran the code of the submit
    status = target.status(Handle("local", "edited"))
    assert (status.tasks[0].restarts, status.tasks[0].exit_code) == (1, 0)
    assert workspace.digest(snapshot) != workspace.digest(project)  # it still holds the code of the submit


# --- docker and k8s: the task image ----------------------------------------------------------------


def test_a_docker_dry_run_runs_every_task_on_the_task_image_without_building_it(project):
    result = pmlctl("submit", "-t", "docker", "--dry-run", "--task", "mypkg.task", "--workers", "1", "--ps", "0")
    assert result.exit_code == 0, result.output
    digest = workspace.digest(project)
    image = f"parallel-ml-task:{digest.removeprefix('sha256:')[:12]}"
    assert f"image {image} (FROM parallel-ml:latest, built at submit unless it is up to date)" in result.stdout
    runs = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("  ") and " run " in line]
    assert len(runs) == 2
    for argv in runs:
        assert argv[argv.index("--pull") + 1] == "never"  # built here: in no registry
        assert f"PML_IMAGE={image}" in argv
        trainer = argv[argv.index(image) + 1 :]
        assert trainer[:4] == ["--task", "mypkg.task", "--workspace", "/workspace"]


def test_render_shows_the_task_image_and_its_code_at_workspace(project):
    result = pmlctl("render", "--task", "t.py", "--task-param", "units=16", "--crd", CRD)
    assert result.exit_code == 0, result.output
    image = f"parallel-ml-task:{workspace.digest(project).removeprefix('sha256:')[:12]}"
    tfjob = next(o for o in objects(result.stdout) if o["kind"] == "TFJob")
    for replica in tfjob["spec"]["tfReplicaSpecs"].values():
        (container,) = replica["template"]["spec"]["containers"]
        assert container["image"] == image
        args = container["args"]
        assert args[args.index("--task") + 1] == "t.py" and args[args.index("--workspace") + 1] == "/workspace"
        assert args[args.index("--task-param") + 1] == "units=16"
        assert {"name": "PML_IMAGE", "value": image} in container["env"]
    assert (
        f"note: image {image} holds workspace {project}" in result.stderr
        and "built FROM parallel-ml:latest" in result.stderr
    )

    values = yaml.safe_load(pmlctl("render", "--values", "--task", "t.py").stdout)
    assert (values["image"], values["trainer"]["workspace"], values["trainer"]["task"]) == (image, "/workspace", "t.py")


def test_a_kind_cluster_gets_the_task_image_loaded_and_another_pushed_by_digest(project, kube):
    image = f"parallel-ml-task:{workspace.digest(project).removeprefix('sha256:')[:12]}"
    common = ["submit", "-t", "k8s", "--dry-run", "--name", "mine", "--task", "t.py", "--model-dir", "s3://models/mine"]

    def containers(result):
        assert result.exit_code == 0, result.output
        tfjob = next(o for o in objects(result.stdout) if o["kind"] == "TFJob")
        return [r["template"]["spec"]["containers"][0] for r in tfjob["spec"]["tfReplicaSpecs"].values()]

    job = project.parent / "job.yaml"
    job.write_text("image_pull_policy: Always\n")  # a loaded image is in no registry: never pulled
    loaded = pmlctl(*common, "-f", str(job))
    assert {(c["image"], c["imagePullPolicy"]) for c in containers(loaded)} == {(image, "IfNotPresent")}
    assert "loaded into the nodes of kind cluster pml" in loaded.stderr

    pushed = pmlctl(*common, "--image-repo", "europe-docker.pkg.dev/p/r")
    assert {c["image"] for c in containers(pushed)} == {f"europe-docker.pkg.dev/p/r/{image}"}
    assert "pushed to europe-docker.pkg.dev/p/r and run by its digest" in pushed.stderr
    assert not kube.calls("POST")  # a dry run

    config = pathlib.Path(os.environ["KUBECONFIG"])
    config.write_text(config.read_text().replace("kind-pml", "gke_p_z_pml"))
    line = one_error_line(pmlctl(*common))
    assert "--task on the cluster of context gke_p_z_pml: give --image-repo" in line


# --- sweeps over task parameters -------------------------------------------------------------------


@dataclass
class RecordedPlan(Plan):
    spec: JobSpec

    def describe(self) -> str:
        return self.spec.name


class Recorder(Target):
    """Runs nothing: each job it is given succeeds at once with the metrics a chief would write."""

    name = "recorder"
    summary = "records the jobs of a sweep (a test's)"
    sees_local_files = True
    poll_seconds = 0.0
    specs: ClassVar[list[JobSpec]] = []

    @classmethod
    def knows(cls, name: str) -> HoldsJob:
        return "no"

    def plan(self, spec: JobSpec, options: dict[str, Any], cpus: list[int] | None = None) -> RecordedPlan:
        return RecordedPlan(spec)

    def submit(self, plan: RecordedPlan) -> Handle:
        self.specs.append(plan.spec)
        model_dir = pathlib.Path(plan.spec.model_dir)
        model_dir.mkdir(parents=True)
        (model_dir / "metrics.jsonl").write_text(json.dumps({"loss": 0.5, "accuracy": 0.8}) + "\n")
        result = {"test_accuracy": 0.8, "train_seconds": 2.0, "steps": 10, "global_batch": 32}
        (model_dir / "result.json").write_text(json.dumps(result))
        return Handle(self.name, plan.spec.name)

    def handle(self, name: str, options: dict[str, Any]) -> Handle:
        return Handle(self.name, name)

    def status(self, handle: Handle) -> JobStatus:
        return JobStatus(handle.name, self.name, SUCCEEDED, "recorded", tasks=[TaskStatus("chief", 0, SUCCEEDED)])

    def logs(self, handle: Handle, role: str | None, index: int, follow: bool):
        yield b""

    def delete(self, handle: Handle) -> str | None:
        return None

    def list(self, options: dict[str, Any]) -> JobList:
        return JobList(self.name, "nowhere", [])


def test_a_sweep_over_a_task_parameter_changes_that_parameter_alone(project, monkeypatch):
    monkeypatch.setitem(registry.TARGETS, "recorder", f"{__name__}:Recorder")
    monkeypatch.setattr(Recorder, "specs", [])
    result = pmlctl(
        "sweep", "-t", "recorder", "--name", "sw", "--task", "t.py", "--task-param", "units=8",
        "--task-param", "act=relu", "--param", "params.units=16,64", "--epochs", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [s.name for s in Recorder.specs] == ["sw-params-units-0-0", "sw-params-units-1-0"]
    assert [s.trainer.params for s in Recorder.specs] == [{"units": 16, "act": "relu"}, {"units": 64, "act": "relu"}]
    assert {(s.trainer.task, s.trainer.workspace, s.trainer.epochs) for s in Recorder.specs} == {
        ("t.py", str(project), 2)
    }
    table = json.loads((project / "runs" / "sw" / "sweep.json").read_text())["tables"][0]
    assert table["title"] == "params.units" and [r["params.units"] for r in table["rows"]] == ["16", "64"]


@pytest.mark.parametrize(
    ("param", "said"),
    [
        ("params.=1,2", "write it as NAME=V1,V2,... for example neurons=32,128,256 or params.units=16,64"),
        ("units=1,2", "units is not a trainer flag; use cores, params.KEY (a task parameter)"),
    ],
)
def test_a_sweep_over_a_misspelt_parameter_is_one_line(project, param, said):
    assert said in one_error_line(pmlctl("sweep", "--task", "t.py", "--param", param))


# --- the task image's rules, without Docker (tests/docker/test_task_image.py builds it) ------------


def test_the_requirements_layer_comes_before_the_code_and_runs_as_root_only():
    lines = task_image.dockerfile("parallel-ml:latest", "10001:10001", requirements=True).splitlines()
    assert lines[0] == "FROM parallel-ml:latest" and lines[-1] == "COPY workspace/ /workspace/"
    assert lines.index("USER root") < lines.index("USER 10001:10001") < len(lines) - 1
    assert task_image.dockerfile("parallel-ml:latest", "", requirements=False).splitlines() == [
        "FROM parallel-ml:latest",
        "COPY workspace/ /workspace/",
    ]


def test_what_the_requirements_may_not_do_to_the_trainer_image():
    before = {"tensorflow-cpu": "2.21.0", "keras": "3.15.0", "numpy": "2.1.0"}
    assert task_deps.problems(before, {**before, "iniconfig": "2.0.0"}) == []
    assert task_deps.problems(before, {**before, "keras": "3.16.0", "tf-keras": "2.21.0", "tensorflow": "2.21.0"}) == [
        "keras 3.15.0 became 3.16.0",
        "tf-keras was installed",
        "tensorflow (the CUDA build) was installed beside tensorflow-cpu",
    ]
    assert task_deps.problems(before, {"keras": "3.15.0", "numpy": "2.1.0"}) == [
        "tensorflow-cpu 2.21.0 became uninstalled"
    ]
