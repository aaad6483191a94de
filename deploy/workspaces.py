"""Your own model on every target: which folder is the workspace, and what each target ships.

`resolve` turns `--task` and `--workspace` (or a job file's `trainer: {task, workspace}`) into an
absolute workspace on this machine and a task named relative to it, as the trainer imports it.
Relative paths are read from where they were written: a flag's from the current folder, a job
file's from the job file's folder. A task FILE.py is found there, or else in the workspace; the
workspace defaults to the FILE's folder, and for a MODULE to the current folder (a job file's
folder, for a job file's MODULE).

A `Shipment` is that workspace, checked and named by its digest (pml_trainer/workspace.py). The
local target runs every task on its snapshot; the docker and k8s targets on the task image,
`parallel-ml-task:<first 12 hex of the digest>` (deploy/task_image.py), whose code is at /workspace.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

from deploy.spec import JobSpec
from pml_trainer import workspace
from pml_trainer.errors import BadInput

IN_IMAGE = "/workspace"
TASK_IMAGE = "parallel-ml-task"


def resolve(spec: JobSpec, flags: dict[str, Any], job_file: pathlib.Path | None) -> JobSpec:
    """The spec with `trainer.workspace` absolute and `trainer.task` relative to it; `BadInput`
    in one line for a task that is not there or not inside the workspace."""
    trainer = spec.trainer
    if trainer.task is None:
        if trainer.workspace is not None:
            raise BadInput(
                f"--workspace {trainer.workspace}: give --task too, a FILE.py or MODULE in it (docs/your-model.md)"
            )
        return spec
    here = pathlib.Path.cwd()
    written = job_file.resolve().parent if job_file is not None else here
    task_base = here if "task" in flags else written
    given = (
        None if trainer.workspace is None else _absolute(trainer.workspace, here if "workspace" in flags else written)
    )
    if given is not None and not given.is_dir():
        raise BadInput(f"--workspace {trainer.workspace}: no such folder; give the folder that holds your task's code")
    if trainer.task.endswith(".py"):
        root, task = _file_task(trainer.task, task_base, given)
        file = task
    else:
        root, task = given or task_base, trainer.task
        file = _module_file(task, root)
    if file not in workspace.files(root):
        raise BadInput(
            f"--task {trainer.task}: {file} is left out of workspace {root} by its ignore file; remove the line "
            "that matches it"
        )
    return spec.model_copy(update={"trainer": trainer.model_copy(update={"task": task, "workspace": str(root)})})


def _absolute(path: str, base: pathlib.Path) -> pathlib.Path:
    return (base / pathlib.Path(path).expanduser()).resolve()


def _file_task(given_task: str, base: pathlib.Path, root: pathlib.Path | None) -> tuple[pathlib.Path, str]:
    path = base / pathlib.Path(given_task).expanduser()
    if not path.is_file() and root is not None and (root / given_task).is_file():
        path = root / given_task
    if not path.is_file():
        where = f" (nor in workspace {root})" if root is not None else ""
        raise BadInput(f"--task {given_task}: no such file in {base}{where}; give the path of your task's FILE.py")
    path = path.parent.resolve() / path.name  # a link keeps its own name: it is what the workspace ships
    root = root or path.parent
    if not path.is_relative_to(root):
        raise BadInput(
            f"--task {given_task}: {path} is not inside workspace {root}; give --workspace a folder that holds it"
        )
    return root, path.relative_to(root).as_posix()


def _module_file(module: str, root: pathlib.Path) -> str:
    """The file a MODULE is imported from, relative to the workspace."""
    stem = module.replace(".", "/")
    for candidate in (f"{stem}.py", f"{stem}/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    raise BadInput(
        f"--task {module}: neither {stem}.py nor {stem}/__init__.py is in workspace {root}; run pmlctl from the "
        "folder that holds it, or give --workspace"
    )


@dataclass(frozen=True)
class Shipment:
    """A checked workspace on this machine and the digest of what is shipped of it."""

    source: pathlib.Path
    code_digest: str

    @property
    def image(self) -> str:
        """The task image's name: the same for the same code, on any machine."""
        return f"{TASK_IMAGE}:{self.code_digest.removeprefix('sha256:')[:12]}"

    @property
    def snapshot(self) -> pathlib.Path:
        return workspace.snapshot_path(self.code_digest)

    def make_snapshot(self) -> pathlib.Path:
        """The snapshot of what was planned; `BadInput` when the workspace changed since."""
        made = workspace.snapshot(self.source)
        if made != self.snapshot:
            raise BadInput(
                f"workspace {self.source} changed between the plan and the submit; submit again once it is saved"
            )
        return made


def shipment(spec: JobSpec) -> Shipment | None:
    """The job's workspace, checked and digested; None for a job of the built-in models."""
    if spec.trainer.task is None:
        return None
    source = pathlib.Path(spec.trainer.workspace or ".").resolve()
    workspace.check(source)
    return Shipment(source, workspace.digest(source))


def in_image(spec: JobSpec, image: str) -> JobSpec:
    """The job as it runs on the task image: that image, and the code at /workspace in it."""
    trainer = spec.trainer.model_copy(update={"workspace": IN_IMAGE})
    return spec.model_copy(update={"image": image, "trainer": trainer})


def previewed(spec: JobSpec) -> tuple[JobSpec, list[str]]:
    """The job as `pmlctl render` shows it: on the task image, which is built only at submit."""
    found = shipment(spec)
    if found is None:
        return spec, []
    then = "loaded into a kind cluster, or pushed to --image-repo and named by its digest (`pmlctl submit -t k8s`)"
    return in_image(spec, found.image), [image_note(found, spec.image, then)]


def image_note(found: Shipment, base: str, then: str) -> str:
    return (
        f"image {found.image} holds workspace {found.source} ({found.code_digest}) at {IN_IMAGE}; at submit it is "
        f"built FROM {base} unless it is up to date, then {then}"
    )
