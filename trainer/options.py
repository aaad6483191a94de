"""The trainer's flags, defined once.

`python -m pml_trainer` builds its argument parser from `TrainOptions`, and the control plane
(`pmlctl submit`, the Helm chart's values) uses the same model, so a flag is added in one place.
This module must stay free of TensorFlow: the CLI imports it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pml_trainer import storage
from pml_trainer.errors import BadInput, first_problem
from pml_trainer.storage.s3 import check_endpoint

JsonScalar = str | int | float | bool | None
TASK_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
DATASET_HELP = "synthetic[:HxWxC], fashion_mnist, flowers, images:<dir> or npz:<file>"
_SYNTHETIC = re.compile(r"^synthetic(?::(\d+)x(\d+)x(\d+))?$")


class TrainOptions(BaseModel):
    """Everything one training run needs to know, whatever its role."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dataset: str = Field("synthetic", description=f"Dataset: {DATASET_HELP}.")
    data_dir: str | None = Field(None, description="Where dataset files are looked for (default: the Keras cache).")
    train_examples: int | None = Field(
        None, ge=1, description="Use only the first N training examples (synthetic: generate N)."
    )
    validation_split: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of the training data held out for validation."
    )
    augment: bool = Field(
        False,
        description="Flip training images left-right at random and vary their contrast by up to "
        "20% (the study's flowers).",
    )
    task: str | None = Field(
        None,
        description="Your own model and data: a task module, FILE.py or a MODULE name in the workspace "
        "(docs/your-model.md). Unset: the built-in network --model on --dataset.",
    )
    workspace: str | None = Field(
        None,
        description="The folder that holds the task's code (default: the folder of --task FILE.py, else the "
        "current folder); pmlctl ships a snapshot of it to every task.",
    )
    params: dict[str, JsonScalar] = Field(
        default_factory=dict,
        description="The task's parameters, KEY=VALUE, repeatable: the value is JSON where it parses "
        "(16, 0.1, true), else a string.",
    )
    model: Literal["mlp", "cnn"] = Field("mlp", description="mlp or cnn (the study's flower net).")
    hidden_layers: int = Field(2, ge=0, le=64, description="Hidden layers of the mlp.")
    neurons: int = Field(128, ge=1, le=65536, description="Neurons per hidden layer of the mlp.")
    epochs: int = Field(5, ge=1, description="Passes over the training data.")
    batch_size: int = Field(256, ge=1, description="Global batch size per training step.")
    learning_rate: float = Field(1e-3, gt=0.0, description="Adam learning rate.")
    lr_decay: Literal["none", "cosine"] = Field(
        "none",
        description="none keeps the rate; cosine lowers it to 0 over the planned steps, "
        "which steadies the final model under asynchronous updates.",
    )
    seed: int = Field(42, ge=0, description="Seed for data, shuffling and initial weights.")
    model_dir: str = Field(
        "runs/model",
        description="Where checkpoints, metrics, TensorBoard logs and the model go: "
        "a folder, gs://BUCKET/PATH or s3://BUCKET/PATH.",
    )
    restart: bool = Field(
        False,
        description="Start afresh when the model dir holds another run (other model, data, seed or "
        "optimizer settings): its checkpoints, metrics, logs and model are deleted first. The same run resumes.",
    )
    s3_endpoint: str | None = Field(
        None,
        description="S3 service for s3:// locations, e.g. http://minio:9000 (http: no TLS) "
        "(default: AWS_ENDPOINT_URL, else AWS).",
    )
    checkpoint_every_steps: int = Field(
        500, ge=1, description="Save a checkpoint every N steps (and at each epoch end)."
    )
    keep_checkpoints: int = Field(3, ge=1, description="How many checkpoints to keep.")
    single_writer: bool = Field(
        False,
        description="Only one chief ever writes to this model dir: go on, with a warning, on a store that "
        "ignores conditional writes (which is otherwise refused). Gives up the fence against a second chief "
        "(a replaced pod still terminating, a second job on the same --model-dir): the two could then "
        "overwrite each other's checkpoints unseen.",
    )
    steps_per_execution: int = Field(
        10, ge=1, description="Training steps per scheduled function (amortises RPC cost)."
    )
    jit: bool | None = Field(
        None,
        description="Compile training with XLA: in one process chunks of steps as one program each, "
        "under ParameterServerStrategy and MultiWorkerMirroredStrategy each replica's forward and backward pass. "
        "None: on for the mlp, off for the cnn, whose convolutions XLA runs at half the speed of TensorFlow's "
        "own kernels on CPU, and off for a --task.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="Threads per op (0: this task's share of the CPUs it may use, its affinity and "
        "container limit divided among the job's tasks on this machine; a pod counts as a machine of its own).",
    )
    inter_op_threads: int = Field(
        0, ge=0, description="Ops run in parallel (0: TensorFlow decides; servers use at least 2)."
    )
    # A chief's new pod may come up to 10 minutes after the old one failed: the Job controller's
    # backoff, which a native Job's ignored preemptions lengthen too (kubernetes pkg/controller/job/
    # backoff_utils.go, MaxJobPodFailureBackOff), plus the time the pod takes to start.
    orphan_timeout: float = Field(
        1200.0, gt=0, description="Seconds a server waits for a vanished chief before giving up."
    )
    chief_start_timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds a server or the evaluator waits for a chief it has never reached, at least "
        "--orphan-timeout (unset: 1200; pmlctl sets 21600 for a native-mode job in a queue, which admits "
        "each task on its own).",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value in ("fashion_mnist", "flowers") or _SYNTHETIC.match(value):
            return value
        for prefix in ("images:", "npz:"):
            if value.startswith(prefix) and len(value) > len(prefix):
                _accepted(storage.parse, value[len(prefix) :])
                return value
        raise ValueError(f"unknown dataset {value!r}; use {DATASET_HELP}")

    @field_validator("task")
    @classmethod
    def _task_name(cls, value: str | None) -> str | None:
        if value is None or value.endswith(".py") or TASK_MODULE.match(value):
            return value
        raise ValueError(f"{value!r} is neither a FILE.py nor a MODULE name such as trainer.task")

    @field_validator("params", mode="before")
    @classmethod
    def _key_values(cls, value: Any) -> Any:
        """KEY=VALUE strings (flags) become a dict; a dict (a job file) is taken as it is."""
        if isinstance(value, (list, tuple)):
            return dict(param(item) for item in value)
        return value

    @field_validator("model_dir", "data_dir")
    @classmethod
    def _location(cls, value: str | None) -> str | None:
        return value if value is None else _accepted(storage.parse, value)

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return value if value is None else _accepted(check_endpoint, value)

    def synthetic_shape(self) -> tuple[int, int, int] | None:
        """The image shape of a synthetic dataset, or None for a real one."""
        match = _SYNTHETIC.match(self.dataset)
        if not match:
            return None
        if match.group(1) is None:
            return (28, 28, 1)
        return tuple(int(g) for g in match.groups())  # type: ignore[return-value]

    def compiles(self) -> bool:
        """Whether XLA compiles training: --jit, else where it was measured faster (bench/RESULTS.md)."""
        return self.jit if self.jit is not None else (self.task is None and self.model == "mlp")

    def reads_image_files(self) -> bool:
        """Whether the input pipeline opens image files as it runs, rather than arrays loaded first."""
        return self.dataset == "flowers" or self.dataset.startswith("images:")

    def missing_local_data(self) -> str | None:
        """What is wrong with a local npz file or image folder, found before TensorFlow loads."""
        kind, _, where = self.dataset.partition(":")
        if kind == "npz" and not storage.is_remote(where) and not pathlib.Path(where).is_file():
            return f"--dataset npz:{where}: no such file; give the path of an .npz file"
        if kind == "images" and not storage.is_remote(where) and not pathlib.Path(where).is_dir():
            return f"--dataset images:{where}: no such folder; give a folder with one sub-folder per class"
        return None

    def to_argv(self) -> list[str]:
        """The flags that differ from the defaults, as `python -m pml_trainer` takes them."""
        argv: list[str] = []
        for name, value in self.model_dump(exclude_defaults=True).items():
            if name == "params":
                for key, item in value.items():
                    argv += [PARAM_FLAG, f"{key}={json.dumps(item)}"]
            elif value is not None:
                argv += [flag(name), str(value)]
        return argv


PARAM_FLAG = "--task-param"


def param(text: str) -> tuple[str, JsonScalar]:
    """`units=16` -> ("units", 16); `name=abc` -> ("name", "abc"): JSON where it parses, else the text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{PARAM_FLAG} {text!r}: write it as KEY=VALUE, for example units=64")
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    if isinstance(value, (dict, list)):
        raise ValueError(f"{PARAM_FLAG} {key}: give a single value (a number, true/false or text), not {raw}")
    return key, value


def _accepted(check: Callable[[str], object], value: str) -> str:
    """`value` once a storage check accepts it; its StorageError becomes the ValueError pydantic reports."""
    try:
        check(value)
    except storage.StorageError as err:
        raise ValueError(str(err)) from None
    return value


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """An unknown flag or a flag without its value: one line, like every other refusal."""
        raise BadInput(f"{message}; see `{self.prog} --help`")


def parser(prog: str = "python -m pml_trainer") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Train one task of a distributed job. The role comes from TF_CONFIG; "
        "without it the trainer runs alone.",
    )
    for name, field in TrainOptions.model_fields.items():
        if name == "params":
            p.add_argument(PARAM_FLAG, dest=name, action="append", metavar="KEY=VALUE", help=str(field.description))
            continue
        default = field.default
        # A switch given alone means true (`--restart`); `--restart false` still turns it off.
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if _is_switch(field.annotation) else {}
        p.add_argument(
            flag(name),
            dest=name,
            default=default,
            metavar=name.upper(),
            # argparse formats help with %: a literal one (the "20%" of --augment) must be doubled.
            help=f"{field.description} (default: {default})".replace("%", "%%"),
            **switch,
        )
        if _is_switch(field.annotation):  # as pmlctl spells the switch off
            p.add_argument(
                "--no-" + flag(name)[2:],
                dest=name,
                action="store_const",
                const="false",
                help=f"The opposite of {flag(name)}.",
            )
    return p


def _is_switch(annotation: object) -> bool:
    return annotation in (bool, bool | None)


def parse_args(argv: list[str]) -> TrainOptions:
    """Parse trainer flags; raise `BadInput` with one line naming the flag and the fix."""
    namespace = parser().parse_args(argv)
    given = {k: v for k, v in vars(namespace).items() if v is not None}
    return validated(given)


def validated(values: dict[str, Any]) -> TrainOptions:
    try:
        return TrainOptions(**values)
    except ValidationError as err:
        raise BadInput(describe(err)) from None


def describe(err: ValidationError) -> str:
    """One line for the first problem pydantic found, in flag spelling."""
    problem = first_problem(err)
    where = ".".join(problem.loc) or "value"
    where = flag(where) if "." not in where else where
    return f"{where}: {problem.message}{problem.given}"
