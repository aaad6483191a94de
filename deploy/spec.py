"""`JobSpec`: everything a job is, in one pydantic model.

The local, docker and Kubernetes back-ends read it, the Helm chart's values are made from it and
the chart's values.schema.json is generated from it. It loads from a YAML file, from flags, or
from both with the flags winning.
"""

from __future__ import annotations

import pathlib
import re
import secrets
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.options import BadInput, TrainOptions, flag

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# The longest replica service name TFJob makes is "<job>-evaluator-0", and a Service name may
# have at most 63 characters.
MAX_NAME = 63 - len("-evaluator-0")


def default_name() -> str:
    return "pml-" + secrets.token_hex(3)


class Replicas(BaseModel):
    """How many tasks of each role. There is always exactly one chief: it coordinates."""

    model_config = ConfigDict(extra="forbid")

    chief: int = Field(1, ge=1, le=1, description="Always 1: the chief coordinates and checkpoints.")
    workers: int = Field(2, ge=0, le=256, description="Worker tasks.")
    ps: int = Field(1, ge=0, le=64, description="Parameter servers (0: workers mirror each other).")
    evaluator: int = Field(0, ge=0, le=1, description="1 adds a sidecar that evaluates each checkpoint.")

    @model_validator(mode="after")
    def _ps_need_workers(self) -> "Replicas":
        if self.ps and not self.workers:
            raise ValueError("ps need at least one worker; add --workers 1 or set --ps 0")
        return self

    def cluster_roles(self) -> dict[str, int]:
        """Role name in TF_CONFIG -> count, in start order (servers before the chief)."""
        return {"ps": self.ps, "worker": self.workers, "evaluator": self.evaluator, "chief": self.chief}


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default_factory=default_name, description="Job name (DNS-1035 label).")
    namespace: str = Field("default", description="Kubernetes namespace.")
    image: str = Field("parallel-ml:latest", description="Trainer image (docker and Kubernetes targets).")
    replicas: Replicas = Field(default_factory=Replicas)
    trainer: TrainOptions = Field(default_factory=TrainOptions)
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for every task.")

    @field_validator("name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if not DNS_1035.match(value) or len(value) > MAX_NAME:
            raise ValueError(f"must be lowercase letters, digits and '-', start with a letter, "
                             f"and be at most {MAX_NAME} characters")
        return value

    @model_validator(mode="after")
    def _model_dir_per_job(self) -> "JobSpec":
        # Two jobs must never share checkpoints by accident: the default is one folder per job.
        if "model_dir" not in self.trainer.model_fields_set:
            self.trainer.model_dir = f"runs/{self.name}"
        return self

    @property
    def model_dir(self) -> str:
        return self.trainer.model_dir


def load(path: pathlib.Path | None, overrides: dict[str, Any]) -> JobSpec:
    """A JobSpec from a YAML file (optional) with `overrides` on top.

    `overrides` is nested like the spec ({"replicas": {"workers": 6}, "trainer": {...}}) and holds
    only what the user gave on the command line. Raises BadInput with one line.
    """
    doc: dict[str, Any] = {}
    if path is not None:
        doc = _read_yaml(path)
    for key, value in overrides.items():
        if isinstance(value, dict):
            section = doc.setdefault(key, {})
            if not isinstance(section, dict):
                raise BadInput(f"{path}: {key} must be a mapping")
            section.update(value)
        else:
            doc[key] = value
    try:
        return JobSpec.model_validate(doc)
    except ValidationError as err:
        raise BadInput(describe(err, path)) from None


def _read_yaml(path: pathlib.Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"-f {path}: no such file; give the path of a job YAML file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BadInput(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: a job file is a mapping with keys such as name, replicas, trainer")
    return doc


def describe(err: ValidationError, path: pathlib.Path | None = None) -> str:
    """One line for the first problem: the field as the user wrote it, what is wrong, the input."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if len(loc) == 2 and loc[0] == "trainer":
        where = f"{flag(loc[1])} (trainer.{loc[1]})"
    elif len(loc) == 2 and loc[0] == "replicas":
        where = f"--{loc[1]} (replicas.{loc[1]})"
    else:
        where = ".".join(loc) or "job spec"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field; check its spelling against `pmlctl render --values`"
    given = first.get("input")
    shown = f" (got {given!r})" if isinstance(given, (str, int, float)) and first["type"] != "extra_forbidden" else ""
    prefix = f"{path}: " if path else ""
    return f"{prefix}{where}: {message}{shown}"
