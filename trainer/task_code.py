"""The user's task module: found in the workspace, imported, checked, and its failures told in
the user's own terms.

A task that cannot run (it does not import, or lacks `model` or `train_data`) is bad input: exit
code 2, which no restart policy retries, within seconds of the task starting. An exception raised
in the user's own code shows the frames of the user's files only, then one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import re
import sys
import traceback
import types

from pml_trainer.errors import BadInput
from pml_trainer.options import TrainOptions

BUILT_IN = "pml_trainer.tasks.image"  # the study's networks, --model and --dataset
REQUIRED = ("model", "train_data")
OPTIONAL = ("eval_data", "validation_data", "loss", "metrics", "optimizer", "serving")


class TaskError(BadInput):
    """The user's task failed in its own code; `frames` is its traceback, our frames left out."""

    def __init__(self, message: str, frames: str = ""):
        super().__init__(message)
        self.frames = frames


def workspace(opts: TrainOptions) -> pathlib.Path:
    return pathlib.Path(opts.workspace or ".").resolve()


def load(opts: TrainOptions) -> types.ModuleType:
    """The task module: the user's (--task, in --workspace) or the built-in one."""
    if opts.task is None:
        return importlib.import_module(BUILT_IN)
    root = workspace(opts)
    if not root.is_dir():
        raise BadInput(f"--workspace {root}: no such folder; give the folder that holds the task's code")
    name, path = _module_of(opts.task, root)
    # First on the path: the user's own modules win over anything installed under the same name.
    for folder in dict.fromkeys([str(path.parent) if path is not None else None, str(root)]):
        if folder is not None and folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(name)
    except Exception as err:
        raise failure(err, opts, f"task {opts.task} does not import") from None
    missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
    if missing:
        raise BadInput(
            f"task {opts.task} defines no {' and no '.join(f'{m}()' for m in missing)}: a task needs "
            "model(params) and train_data(params, shard); see docs/your-model.md"
        )
    return module


def _module_of(task: str, root: pathlib.Path) -> tuple[str, pathlib.Path | None]:
    """The module name of `task` (a FILE.py below the workspace, or a MODULE), and its file.

    A file inside packages (folders with __init__.py) is imported as a module of those packages,
    `trainer/task.py` as `trainer.task`, so that its relative imports work."""
    if not task.endswith(".py"):
        return task, None
    path = (root / task).resolve()
    if not path.is_file():
        raise BadInput(f"--task {task}: no such file in the workspace {root}; give a path relative to it")
    parts = [path.stem]
    folder = path.parent
    while folder != root and (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts), folder / "_"


def failure(err: BaseException, opts: TrainOptions, what: str | None = None) -> TaskError | None:
    """A TaskError for `err` when the user's code raised it or is in its way, else None.

    Only the frames of files in the workspace are kept: TensorFlow's and ours say nothing the user
    can act on. The line names the user's innermost frame, file and line."""
    if opts.task is None:
        return None
    root = workspace(opts)
    frames = [f for f in traceback.extract_tb(err.__traceback__) if _inside(f.filename, root)]
    if isinstance(err, SyntaxError) and err.filename and _inside(err.filename, root):
        where = f" ({_relative(err.filename, root)}, line {err.lineno})"
    elif frames:
        where = f" ({_relative(frames[-1].filename, root)}, line {frames[-1].lineno}, in {frames[-1].name})"
    elif what is None:
        return None
    else:
        where = ""
    problem = f"{type(err).__name__}: {_message(err)}".rstrip(": ")
    shown = "".join(traceback.format_list(frames)) if frames else ""
    header = "Traceback (the task's own frames):\n" if shown else ""
    return TaskError(f"{what or f'task {opts.task} failed'}: {problem}{where}", header + shown)


def _message(err: BaseException) -> str:
    """The error's own words, unwrapped: Keras wraps an error raised in a layer's call() with its
    original message in bold (keras/src/utils/traceback_utils.py, inject_argument_info_in_traceback),
    and TensorFlow one raised while tracing as "in user code:", the frames, then the original line
    (tensorflow/python/autograph/pyct/error_utils.py, ErrorMetadataBase)."""
    if isinstance(err, SyntaxError):  # its str() repeats the file and line, said apart here
        return str(err.msg)
    text = str(err)
    bold = re.search(r"\x1b\[1m(.*?)\x1b\[0m", text, re.S)
    if bold:
        return bold.group(1).strip().splitlines()[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].endswith("in user code:"):
        return lines[-1].removeprefix(f"{type(err).__name__}: ")
    return lines[0]


def _inside(filename: str, root: pathlib.Path) -> bool:
    # Not a file (<frozen importlib._bootstrap>), though resolved against the current folder it
    # would seem one of a workspace that is the current folder.
    if filename.startswith("<"):
        return False
    try:
        return pathlib.Path(filename).resolve().is_relative_to(root)
    except (OSError, ValueError):
        return False


def _relative(filename: str, root: pathlib.Path) -> str:
    return pathlib.Path(filename).resolve().relative_to(root).as_posix()
