"""What a run is: the settings that define it, kept in `<model-dir>/run.json`.

A model dir holds one run, and a relaunch on it resumes that run. Resuming only makes sense with
the same model, data, seed and optimizer: a checkpoint of another network cannot be restored, and
one of the same network with another seed or learning rate would silently carry on as the old run
(or, finished, train nothing and report the old weights). So the chief writes the settings that
define the run next to its first checkpoint, and every later start compares its own with them
before training, and refuses in one line that names each difference and the ways out: another
--model-dir, or --restart, which discards the old run.

Which settings define a run: the network (--model, and --hidden-layers and --neurons for the
mlp), the data (--dataset, --train-examples, --validation-split, --augment), --seed, and the
optimizer and its steps (--learning-rate, --lr-decay, --batch-size: a step count means other
epochs under another batch size). Everything else may change on a resume: --epochs (more epochs
on the same run is a resume), the model dir itself, where data is read from (--data-dir),
checkpointing, threads, and the cluster's shape.

Free of TensorFlow: `pmlctl submit` runs the same check before it starts any task.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

from pml_trainer import durable, staging, workspace
from pml_trainer.log import log
from pml_trainer.options import PARAM_FLAG, TrainOptions, flag
from pml_trainer.storage import is_remote, open_store

FILE = "run.json"
DEFINING = (
    "model",
    "hidden_layers",
    "neurons",
    "dataset",
    "train_examples",
    "validation_split",
    "augment",
    "seed",
    "learning_rate",
    "lr_decay",
    "batch_size",
)
MLP_ONLY = ("hidden_layers", "neurons")  # the cnn's layers are fixed: these flags do not change it
# A task module defines its own network and data: of the built-in task's settings, these remain.
TASK_DEFINING = ("task", "augment", "seed", "learning_rate", "lr_decay", "batch_size")
IMAGE_ENV = "PML_IMAGE"  # set by the docker and Kubernetes targets: the image a task runs
# What a run leaves in its model dir, and so what --restart deletes. Nothing else is touched: a
# model dir may have been pointed at a folder that holds other things too.
OUTPUTS = ("checkpoints", "metrics.jsonl", "eval.jsonl", "result.json", "saved_model", "logs", "chiefs", "readings")
POINTER = "checkpoints/checkpoint"


class Mismatch(Exception):
    """The model dir holds another run; the message is one line with the differences and the ways out."""


def defining_settings(opts: TrainOptions) -> dict[str, Any]:
    """The run's defining settings, by flag name (as run.json stores them and messages say them)."""
    if opts.task is not None:
        names = list(TASK_DEFINING)
    else:
        names = [n for n in DEFINING if opts.model == "mlp" or n not in MLP_ONLY]
    return {flag(n): getattr(opts, n) for n in names}


def code(opts: TrainOptions) -> dict[str, Any]:
    """Which code a run trains with: the task, its parameters, the digest of the workspace as
    shipped (pml_trainer.workspace), and the image where a target set one."""
    record: dict[str, Any] = {"task": opts.task, "params": opts.params, "code_digest": code_digest(opts)}
    if os.environ.get(IMAGE_ENV):
        record["image"] = os.environ[IMAGE_ENV]
    return record


def code_digest(opts: TrainOptions) -> str | None:
    return workspace.digest(pathlib.Path(opts.workspace or ".")) if opts.task is not None else None


def document(opts: TrainOptions) -> str:
    record = {key: value for key, value in code(opts).items() if key != "image"}
    return json.dumps({"settings": defining_settings(opts), **record}, indent=2) + "\n"


def write(opts: TrainOptions, folder: pathlib.Path) -> None:
    """Write run.json into a local folder (the model dir, or the staging folder of a remote one)."""
    durable.write_text(folder / FILE, document(opts))


def read(opts: TrainOptions, patient: bool = True) -> dict[str, Any] | None:
    """The run.json saved in the model dir, or None when no run has saved one there yet, or when
    a crash cut its writing short (see `cut_short`).

    Raises Mismatch when run.json is there but unreadable otherwise: the model dir cannot be vouched
    for. Not `patient`: a remote model dir that does not answer at once raises StorageError at once.
    """
    data = _read_bytes(opts, patient)
    return None if data is None or cut_short(data) else _parse(opts, data)


def _read_bytes(opts: TrainOptions, patient: bool) -> bytes | None:
    if is_remote(opts.model_dir):
        store = open_store(opts.model_dir, opts.s3_endpoint)
        if not patient:
            store.patience = 0.0
        return store.get_bytes(FILE)
    path = pathlib.Path(opts.model_dir) / FILE
    return path.read_bytes() if path.is_file() else None


def _parse(opts: TrainOptions, data: bytes) -> dict[str, Any]:
    saved = parsed(data)
    if saved is None:
        raise Mismatch(
            f"--model-dir {opts.model_dir}: its {FILE} is not what a run writes there; use another --model-dir, "
            f"delete its {FILE} to resume with this launch's settings (a checkpoint is restored only if it fits "
            "this model), or --restart to discard what it holds and start afresh"
        )
    return saved


def parsed(data: bytes) -> dict[str, Any] | None:
    """A run.json's content; None if it is not one."""
    try:
        saved = json.loads(data)
        if not isinstance(saved["settings"], dict) or not isinstance(saved.get("params", {}), dict):
            raise TypeError
        return saved
    except (ValueError, KeyError, TypeError):
        return None


def other_run(opts: TrainOptions) -> Callable[[bytes], list[str]]:
    """How a run.json found in the model dir differs from this run ([]: it is this run's, or one
    whose writing a crash cut short, which `read` takes for none)."""

    def changed(data: bytes) -> list[str]:
        if cut_short(data):
            return []
        saved = parsed(data)
        return differences(saved, opts) if saved is not None else [f"its {FILE} is unreadable"]

    return changed


def cut_short(data: bytes) -> bool:
    """Is this a run.json whose writing a crash cut short, rather than another program's file?

    What a power loss or a node crash leaves of a file renamed before its data reached the disk is
    empty, or zero bytes up to its size (as delayed allocation on ext4 and XFS can leave it), and
    a copy cut short is a prefix: JSON that ends early. run.json is synced before its rename
    (pml_trainer.durable), but one written by an earlier version, or on a volume that does not
    honour fsync (an NFS export with `async`), may still be found so.

    Such a run.json is read as none at all, the way a model dir from before run.json existed is: a
    relaunch after the crash is the job's own restart, with the same flags, and refusing it (exit 2,
    or --restart, which discards the run) would turn a crash the job should survive into a run lost
    or a human woken. What stays checked: restoring the checkpoint fails in one line unless every
    variable fits this model (Checkpoints.restore_latest), and the chief writes run.json again from
    this launch's settings at its first checkpoint. What is lost: a relaunch with another seed,
    learning rate or batch size is not told that they differ; `admit` says so in a note. With
    --restart it is discarded, as a run that never saved its settings is: nothing shows it to be
    this run.
    """
    text = data.replace(b"\0", b"").strip()
    if not text:
        return True
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        # It failed only where the text ran out (a string left open is reported where it began).
        return err.pos >= len(err.doc.rstrip()) or err.msg.startswith("Unterminated string")
    except ValueError:  # not even text (bytes that are not UTF-8): not what a run writes
        return False
    return False


def differences(saved: dict[str, Any], opts: TrainOptions) -> list[str]:
    """'--neurons 64 there, 256 here' for each setting that differs.

    Only settings both sides name are compared: a cnn run has no --neurons, and its --model
    already differs from an mlp's.
    """
    settings, mine = saved["settings"], defining_settings(opts)
    if ("--task" in settings) != (opts.task is not None):  # one side trains a task, the other a built-in network
        there = settings.get("--task") or f"the built-in {settings.get('--model', 'mlp')}"
        here = opts.task or f"the built-in {opts.model}"
        return [f"--task {there} there, {here} here"]
    changed = [
        f"{name} {_shown(settings[name])} there, {_shown(value)} here"
        for name, value in mine.items()
        if name in settings and settings[name] != value
    ]
    if opts.task is not None and "--task" in settings:
        theirs = saved.get("params", {})
        changed += [
            f"{PARAM_FLAG} {key} {_shown(theirs.get(key))} there, {_shown(opts.params.get(key))} here"
            for key in sorted(theirs.keys() | opts.params.keys())
            if theirs.get(key) != opts.params.get(key)
        ]
    return changed


def code_change(saved: dict[str, Any] | None, opts: TrainOptions) -> str | None:
    """A warning when the run resumes with other code than it began with, else None."""
    before = (saved or {}).get("code_digest")
    if before is None or opts.task is None:
        return None
    now = code_digest(opts)
    if now == before:
        return None
    return f"the task's code changed since this run began ({before} then, {now} now); resuming with the new code"


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def admit(opts: TrainOptions, may_discard: bool, patient: bool = True) -> str | None:
    """Before a training task starts: may it resume (or start) in this model dir?

    Raises Mismatch when the model dir holds another run and --restart was not given. With
    --restart and another run there (or one that never saved its settings), the chief
    (`may_discard`) deletes that run's outputs; the message it returns says so. The same run
    resumes even with --restart: a task restarted after a preemption runs with the flags it was
    first given, and must not throw its own progress away.
    """
    data = _read_bytes(opts, patient)
    damaged = data is not None and cut_short(data)
    try:
        saved = None if data is None or damaged else _parse(opts, data)
    except Mismatch:
        if not opts.restart:
            raise
        saved, changed = {}, ["its run.json is unreadable"]
    else:
        changed = differences(saved, opts) if saved is not None else []
    if damaged and opts.restart:  # as for a run that never saved its settings: not provably this run
        changed = [f"its {FILE} is empty or cut short"]
    if changed and not opts.restart:
        raise Mismatch(
            f"--model-dir {opts.model_dir} holds another run ({'; '.join(changed)}): use another "
            "--model-dir, or --restart to discard that run and start afresh"
        )
    if damaged and not opts.restart:
        return (
            f"--model-dir {opts.model_dir}: its {FILE} is empty or cut short (a crash while it was written); "
            "resuming as without one: a checkpoint there is restored only if it fits this model, and the seed, "
            f"data and optimizer settings of this launch, which nothing can check, are written to a new {FILE}"
        )
    if not opts.restart or (saved is not None and not changed):
        return None
    why = f" ({'; '.join(changed)})" if changed else ""
    if not may_discard:
        return f"--restart: the chief discards the run in {opts.model_dir}{why} when it starts" if changed else None
    deleted = discard(opts)
    return (
        f"--restart: discarded the run in {opts.model_dir}{why}: {deleted} file(s); starting afresh"
        if deleted
        else None
    )


def resumes(opts: TrainOptions) -> bool:
    """Whether a training task restores the model dir's latest checkpoint (after `admit`).

    Not with --restart unless the saved settings are this run's: a mirrored worker may look
    before the chief has discarded the old run, and must start afresh as the chief does.
    """
    try:
        saved = read(opts)
    except Mismatch:
        return False
    if saved is None:
        return not opts.restart  # a model dir from before run.json existed resumes as it did
    return not differences(saved, opts)


def discard(opts: TrainOptions) -> int:
    """Delete a run's outputs from the model dir; return how many files went.

    The checkpoint pointer goes first, so nothing looks resumable while the rest goes, and
    run.json last, so a discard cut short still names the old run and a relaunch without
    --restart is still refused.
    """
    if is_remote(opts.model_dir):
        # What the run staged on this machine goes too: a later start would publish it again.
        if cleared := staging.clear(opts.model_dir):
            log.info(f"--restart: removed {cleared} staging folder(s) of {opts.model_dir} on this machine")
        store = open_store(opts.model_dir, opts.s3_endpoint)
        names = [e.name for e in store.list() if e.name.split("/")[0] in OUTPUTS]
        ordered = sorted(names, key=lambda n: n != POINTER) + ([FILE] if store.get_bytes(FILE) is not None else [])
        for name in ordered:
            store.delete(name)
        return len(ordered)
    root = pathlib.Path(opts.model_dir)
    count = 0
    for name in (POINTER, *OUTPUTS, FILE):
        path = root / name
        if path.is_dir():
            count += sum(1 for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path)
        elif path.is_file():
            count += 1
            path.unlink()
    return count
