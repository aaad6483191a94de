"""`JobSpec`: everything a job is, in one pydantic model.

The local, docker and Kubernetes back-ends read it, the Helm chart's values are made from it and
the chart's values.schema.json is generated from it. It loads from a YAML file, from flags, or
from both with the flags winning.
"""

from __future__ import annotations

import difflib
import json
import pathlib
import re
import secrets
from collections.abc import Callable
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from pml_trainer.errors import BadInput, first_problem
from pml_trainer.options import TrainOptions, flag

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# Defined here once, and in the Helm chart (templates/_helpers.tpl), whose Go templates cannot read
# Python: tests/test_chart.py (test_the_chart_and_the_job_spec_share_their_constants) ties the two.
# The longest replica service name TFJob makes is "<job>-evaluator-0", and a Service name may
# have at most 63 characters.
MAX_NAME = 63 - len("-evaluator-0")
TF_PORT = 2222  # every task's TensorFlow server (docker, Kubernetes); the chief serves its state on the next
ROLES = ("chief", "worker", "ps", "evaluator")  # the order tasks are listed in: status, the chart's objects
# A Kubernetes resource quantity without a sign: 500m, 2, 1.5, 4Gi, 512M, 1e9.
QUANTITY = re.compile(r"^(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
# A submission id: a label value (63 characters at most).
SUBMISSION = re.compile(r"^[a-z0-9]{1,16}$")
# What Kubernetes accepts as an environment variable name.
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


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
    def _ps_need_workers(self) -> Replicas:
        if self.ps and not self.workers:
            raise ValueError("ps need at least one worker; add --workers 1 or set --ps 0")
        return self

    def cluster_roles(self) -> dict[str, int]:
        """Role name in TF_CONFIG -> count, in start order (servers before the chief)."""
        return {"ps": self.ps, "worker": self.workers, "evaluator": self.evaluator, "chief": self.chief}

    def cluster(self, address: Callable[[str, int], str]) -> dict[str, list[str]]:
        """The TF_CONFIG cluster, with `address(role, index)` giving each task's host:port."""
        return {role: [address(role, i) for i in range(count)] for role, count in self.cluster_roles().items() if count}


def _quantity(value: Any) -> Any:
    # YAML reads `cpu: 2` as a number; Kubernetes takes it as the quantity "2".
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and not QUANTITY.match(value):
        raise ValueError("must be a Kubernetes quantity such as 500m, 2, 1.5, 4Gi or 512Mi")
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": QUANTITY.pattern}, {"type": "number", "minimum": 0}]}),
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(Section):
    cpu: Quantity | None = Field(
        None, description="CPU request, e.g. 500m or 2. No limit: a CPU limit throttles TensorFlow's thread pools."
    )
    memory: Quantity | None = Field(
        None, description="Memory request and limit, e.g. 4Gi. Equal values keep the pod last in line for eviction."
    )
    gpu: int = Field(0, ge=0, le=16, description="nvidia.com/gpu per task.")


class Toleration(Section):
    key: str | None = Field(None, description="Taint key; empty with operator Exists tolerates every taint.")
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value; drop the value or use Equal")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator Exists")
        return self


class Role(Section):
    """Where and with what the tasks of one role run."""

    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods need.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pods tolerate.")


class Roles(Section):
    chief: Role = Field(default_factory=Role)
    worker: Role = Field(default_factory=Role)
    ps: Role = Field(default_factory=Role)
    evaluator: Role = Field(default_factory=Role)


class Credentials(Section):
    """Storage credentials, only ever read from a Secret: never literal values in the spec."""

    secret: str = Field(description="Name of a Secret in the job's namespace.")
    env: dict[str, str] = Field(
        default_factory=lambda: {
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        },
        description="Environment variable -> key in the Secret.",
    )


class ServiceAccount(Section):
    create: bool = Field(True, description="Create a dedicated ServiceAccount for the job.")
    name: str | None = Field(None, description="Its name [default: the job name]; an existing one if create is false.")
    gcp_service_account: str | None = Field(
        None, description="GKE Workload Identity: the Google service account the pods act as."
    )

    @model_validator(mode="after")
    def _existing_one_is_named(self) -> ServiceAccount:
        if not self.create and not self.name:
            raise ValueError("with create: false, name the existing ServiceAccount the pods use")
        return self


class Policy(Section):
    """What happens when tasks fail, and how long a job may live."""

    restart_policy: Literal["ExitCode", "OnFailure", "Never"] = Field(
        "ExitCode",
        description="Chief, workers and evaluator. ExitCode retries 128 and above only; "
        "a ps restarts after a crash, never after it ends with 0.",
    )
    backoff_limit: int = Field(6, ge=0, le=100, description="Restarts before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Stop the job after this long.")
    ttl_seconds_after_finished: int | None = Field(
        86400, ge=0, description="Delete the finished job after this long (null: keep it)."
    )
    clean_pod_policy: Literal["Running", "All", "None"] = Field(
        "Running", description="TFJob: pods to delete when the job ends (None leaves ps running)."
    )


class Scheduling(Section):
    queue: str | None = Field(
        None,
        description="Scheduler queue: Kueue's queue-name label (on the TFJob; in native mode on each task's Job, "
        "admitted one by one) and TFJob schedulingPolicy.queue (Volcano, scheduler-plugins).",
    )
    priority_class: str | None = Field(None, description="PriorityClass of the pods.")


# The trainer image's user (Dockerfile: ARG UID, USER ${UID}:${UID}); pods run as the same one, so the home
# directory and files the image made for it are theirs. tests/test_chart.py ties the copies together.
IMAGE_UID = 10001


class Security(Section):
    run_as_user: int = Field(
        IMAGE_UID, ge=1, description="Numeric UID of the trainer (never 0: pods run as non-root); the image's user."
    )
    run_as_group: int = Field(IMAGE_UID, ge=0, description="Numeric GID of the trainer; the image's group.")


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        default_factory=default_name,
        description="Job name (DNS-1035 label).",
        json_schema_extra={"pattern": DNS_1035.pattern, "maxLength": MAX_NAME},
    )
    namespace: str = Field("default", description="Kubernetes namespace.")
    mode: Literal["tfjob", "native"] = Field(
        "tfjob", description="Kubernetes objects: a Kubeflow TFJob, or plain Jobs and Services (no operator)."
    )
    image: str = Field("parallel-ml:latest", description="Trainer image (docker and Kubernetes targets).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    replicas: Replicas = Field(default_factory=Replicas)
    trainer: TrainOptions = Field(default_factory=TrainOptions)
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for every task.")
    roles: Roles = Field(default_factory=Roles, description="Resources and placement per role.")
    credentials: Credentials | None = Field(None, description="Storage credentials from a Secret.")
    service_account: ServiceAccount = Field(default_factory=ServiceAccount)
    policy: Policy = Field(default_factory=Policy)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    security: Security = Field(default_factory=Security)
    experiment: str | None = Field(
        None,
        description="Set by `pmlctl sweep` and `compare` on each of their runs: the experiment's name, under "
        "which `pmlctl list` groups them.",
        pattern=DNS_1035.pattern,
    )
    submission: str | None = Field(
        None,
        description="Set by `pmlctl submit`: labels every object and pod of one submission, so that a "
        "replaced job's Terminating pods are never mixed with the new ones.",
        pattern=SUBMISSION.pattern,
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key == "TF_CONFIG":
                raise ValueError("TF_CONFIG is built for each task; remove it from env")
            if not ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name; use letters, digits, '_', '-' and '.'")
        return value

    @field_validator("name")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if not DNS_1035.match(value) or len(value) > MAX_NAME:
            raise ValueError(
                f"must be lowercase letters, digits and '-', start with a letter, and be at most {MAX_NAME} characters"
            )
        return value

    @model_validator(mode="after")
    def _model_dir_per_job(self) -> JobSpec:
        # Two jobs must never share checkpoints by accident: the default is one folder per job.
        if "model_dir" not in self.trainer.model_fields_set:
            self.trainer.model_dir = f"runs/{self.name}"
        return self

    @property
    def model_dir(self) -> str:
        return self.trainer.model_dir


def load(path: pathlib.Path | None, overrides: dict[str, Any], preset: dict[str, Any] | None = None) -> JobSpec:
    """A JobSpec from a preset and a YAML file (both optional) with `overrides` on top.

    Each layer is nested like the spec ({"replicas": {"workers": 6}, "trainer": {...}}); the
    overrides hold only what the user gave on the command line. Raises BadInput with one line.
    """
    doc: dict[str, Any] = {}
    for layer in (preset or {}, _read_yaml(path) if path is not None else {}, overrides):
        for key, value in layer.items():
            if isinstance(value, dict):
                section = doc.setdefault(key, {})
                if not isinstance(section, dict):
                    raise BadInput(
                        f"{path}: {key} must be a mapping of fields, such as {key}: {{...}}; "
                        "`pmlctl render --values` shows them"
                    )
                for field, given in value.items():  # a job file's trainer.params, merged with the flags'
                    merged = isinstance(given, dict) and isinstance(section.get(field), dict)
                    section[field] = {**section[field], **given} if merged else given
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
    except (OSError, UnicodeDecodeError) as err:  # a folder, an unreadable or a binary file
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise BadInput(f"-f {path}: cannot read it ({reason}); give the path of a job YAML file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]  # e.g. a control character
        raise BadInput(f"{path}: not valid YAML{where}: {problem}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: a job file is a mapping with keys such as name, replicas, trainer")
    return doc


def _fields_at(loc: list[str]) -> list[str]:
    """The field names a job file may write at `loc` (e.g. ["trainer"])."""
    model: Any = JobSpec
    for part in loc:
        annotation = model.model_fields[part].annotation if part in getattr(model, "model_fields", {}) else None
        model = next(
            (
                a
                for a in (annotation, *getattr(annotation, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if model is None:
            return []
    return list(model.model_fields)


def _printable(part: str) -> str:
    """A field name as written, or quoted when it is a map key that would break the one line (a newline)."""
    return part if part.isprintable() else json.dumps(part)


def describe(err: ValidationError, path: pathlib.Path | None = None) -> str:
    """One line for the first problem: the field as the user wrote it, what is wrong, the input."""
    loc, kind, message, given = first_problem(err)
    loc = [_printable(part) for part in loc]
    if loc[:1] == ["env"]:  # the value may be a secret: it is never printed (deploy/redact.py)
        given = ""
    if kind == "extra_forbidden":
        where = ".".join(loc)
    elif len(loc) == 2 and loc[0] == "trainer":
        where = f"{flag(loc[1])} (trainer.{loc[1]})"
    elif len(loc) == 2 and loc[0] == "replicas" and loc[1] != "chief":  # the chief has no flag
        where = f"--{loc[1]} (replicas.{loc[1]})"
    else:
        where = ".".join(loc) or "job spec"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _fields_at(loc[:-1]), n=1)
        hint = f"did you mean `{close[0]}`?" if close else "check its spelling against `pmlctl render --values`"
        message, given = f"unknown field; {hint}", ""
    elif kind == "missing":
        message = "required but missing; add it"
    prefix = f"{path}: " if path else ""
    return f"{prefix}{where}: {message}{given}"
