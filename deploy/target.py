"""The contract every place a job can run follows, and the data it returns.

Modelled on TorchX's `Scheduler` (pytorch/torchx, torchx/schedulers/api.py): a dry run that
returns the request without making it (`submit_dryrun`), `schedule` of that request returning a
handle, `describe` returning one status type whatever the scheduler, `log_iter` returning an
iterator that follows the log when asked (`should_tail`), an idempotent `cancel`, `list`, and
`run_opts`, the options each scheduler declares for itself (kubernetes_scheduler.py declares its
namespace and queue). Two differences: `wait` belongs to the target, where TorchX's runner polls
`describe`, because Kubernetes must ride out an API server that does not answer and fail a job
past its backoff limit, which the operator never does (deploy/k8s/state.py); and `delete` returns
only once the job's processes, containers or pods are gone, where TorchX's `cancel` returns at
once, because a job's name is reused (a relaunch resumes from its checkpoints) and the new job
must never meet the old one's tasks.

Targets return data and never print. What they have to say while they work (a note, a job's phase
changing during `wait`) goes to the `events` callback they are given; deploy/view.py renders all of
it, tables and JSON alike, the same way for every target. A refusal is a `BadInput` with one line.

Adding a target is a module with a `Target` subclass and one entry in deploy/registry.py, or an
entry point of the group `parallel_ml.targets` in a package of its own. A target whose jobs a
supervisor on this machine runs follows deploy/launcher.py as well.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

from deploy.spec import JobSpec

# A job's phase, in Kubernetes' words (a TFJob's conditions), for every target.
PENDING, RUNNING, RESTARTING, SUSPENDED = "Pending", "Running", "Restarting", "Suspended"
SUCCEEDED, FAILED, CANCELLED = "Succeeded", "Failed", "Cancelled"  # Cancelled: Ctrl-C or `pmlctl delete`
PHASES = (PENDING, RUNNING, RESTARTING, SUSPENDED, SUCCEEDED, FAILED, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
# A task's phase: a pod's, or a process's or container's read the same way; NoPod before it has one.
TASK_PHASES = ("NoPod", PENDING, RUNNING, SUCCEEDED, FAILED)

HoldsJob = Literal["yes", "maybe", "no"]  # does a target hold a job of some name? (`Target.knows`)
COMMANDS = ("submit", "status", "logs", "list", "delete", "wait")  # the pmlctl commands that go to a target


@dataclass(frozen=True)
class Option:
    """A flag a target declares for itself (TorchX's runopts), shown under the target in --help."""

    name: str  # as typed, without the dashes: "max-restarts"
    type: type  # str, int, float, bool or pathlib.Path
    help: str
    default: Any = None  # what the target uses when the flag is not given
    short: str | None = None  # "-n"
    commands: tuple[str, ...] = ("submit",)  # the pmlctl commands that take it
    locates: bool = False  # it says where jobs are (a cluster, a namespace): giving it picks this target
    minimum: int | None = None

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")


@dataclass
class Handle:
    """A job on a target: what every call after `submit` takes."""

    target: str
    name: str
    scope: dict[str, str] = field(default_factory=dict)  # where on the target: a context and namespace
    place: str = "on this machine"  # the same in words, for messages: "in namespace ml (context kind-pml)"


@dataclass
class TaskStatus:
    role: str
    index: int
    phase: str = "NoPod"
    where: str = ""  # its address (local, docker) or pod (Kubernetes)
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""  # why it waits or failed, in the target's words (ErrImagePull)
    message: str = ""  # the detail: a failed task's last error line, a pod's waiting message
    ended: str = ""  # how its process ended: by itself, on SIGTERM, killed (local, docker)
    pid: int | None = None
    cpus: list[int] | None = None  # the CPUs the kernel lets it run on (local)
    log: str | None = None  # its log file (local, docker)

    @property
    def label(self) -> str:
        return f"{self.role}-{self.index}"


@dataclass
class JobStatus:
    """What `status` returns and `list` lists, for every target; a local job's job.json is one."""

    name: str
    target: str
    phase: str
    kind: str  # how it runs: processes, containers, or a TFJob's or plain Jobs' mode (tfjob, native)
    where: str = ""  # "namespace ml, context kind-pml"; empty on this machine
    created: str = ""  # ISO 8601, UTC
    model_dir: str | None = None
    experiment: str | None = None  # the sweep or comparison it is a run of
    exit_code: int | None = None  # the job's, where the target has one: the chief's (local, docker)
    problem: str | None = None  # why it cannot go on although it has not failed, with the fix
    notes: list[str] = field(default_factory=list)  # what else the target reports: the TFJob's conditions
    tasks: list[TaskStatus] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # the target's own: a submission id, a supervisor's pid

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JobStatus:
        known = {f.name for f in fields(TaskStatus)}
        tasks = [TaskStatus(**{k: v for k, v in t.items() if k in known}) for t in doc.get("tasks", [])]
        return cls(**{**{k: v for k, v in doc.items() if k in {f.name for f in fields(cls)}}, "tasks": tasks})


@dataclass
class JobList:
    target: str
    place: str  # "in namespace ml (context kind-pml)", "on this machine"
    jobs: list[JobStatus]


@dataclass
class Outcome:
    """How a job ended, or why `wait` stopped waiting."""

    name: str
    phase: str
    message: str = ""  # unless it succeeded, the one line that says why: it failed, or what it still waits for
    exit_code: int | None = None  # the job's own (JobStatus.exit_code)
    timed_out: bool = False
    model_dir: str | None = None

    @property
    def code(self) -> int:
        """`pmlctl wait`'s exit code: 0 success, 1 failure, 2 still going at the timeout."""
        if self.phase == SUCCEEDED:
            return 0
        return 2 if self.timed_out else 1


@dataclass
class Note:
    text: str


@dataclass
class PhaseChanged:
    name: str
    phase: str


Event = Note | PhaseChanged


class Plan(ABC):
    """What `submit` would do, made without doing it: a dry run prints `describe()`."""

    spec: JobSpec

    @abstractmethod
    def describe(self) -> str:
        """The processes, containers or objects, as text (secrets hidden)."""


class Target(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]  # for --target's help: "processes on this machine"
    options: ClassVar[tuple[Option, ...]] = ()
    # The job lives as long as `pmlctl submit` does: submit streams its output and waits for its end.
    attached: ClassVar[bool] = False
    # The tasks see this machine's files: a local dataset and model dir are checked before submit.
    sees_local_files: ClassVar[bool] = False
    # Its jobs are kept on this machine: `pmlctl list` without -t shows them.
    listed_by_default: ClassVar[bool] = False
    pins_cpus: ClassVar[bool] = False  # `plan` takes `cpus` (sweeps over cores)
    runs_image: ClassVar[bool] = False  # its tasks run the spec's image (--image), not this machine's Python
    poll_seconds: ClassVar[float] = 0.5  # how often the default `wait` reads the status

    def __init__(self, events: Callable[[Event], None] = lambda event: None):
        self.events = events

    def note(self, text: str) -> None:
        self.events(Note(text))

    @classmethod
    @abstractmethod
    def knows(cls, name: str) -> HoldsJob:
        """ "yes" when it holds a job of that name, "maybe" when only asking it would tell (a
        cluster), "no" otherwise. Cheap: it decides where a command goes."""

    @classmethod
    def unasked(cls) -> str | None:
        """Why `knows` could not look for a job here at all (a cluster with no kubeconfig), with the fix;
        None when it looked. A name found nowhere says which targets were never asked."""
        return None

    @abstractmethod
    def plan(self, spec: JobSpec, options: dict[str, Any], cpus: list[int] | None = None) -> Plan:
        """The dry run; nothing starts. `cpus`, where `pins_cpus`, pins every task to those CPUs."""

    @abstractmethod
    def submit(self, plan: Plan) -> Handle:
        """Start the job; return once it is started (an attached job runs until `wait` returns)."""

    @abstractmethod
    def handle(self, name: str, options: dict[str, Any]) -> Handle:
        """The handle of a job of that name, where the options say (a context, a namespace)."""

    @abstractmethod
    def status(self, handle: Handle) -> JobStatus:
        """The job and each of its tasks; BadInput when there is no such job."""

    @abstractmethod
    def logs(self, handle: Handle, role: str | None, index: int, follow: bool) -> Iterator[bytes]:
        """One task's log; `role` None is the whole job's output where the target has one (else the
        chief's). With `follow`, until the task ends."""

    @abstractmethod
    def delete(self, handle: Handle) -> str | None:
        """Stop the job and forget it; return what was removed, or None when there was no such job.
        Idempotent; returns only when its processes, containers or pods are gone."""

    @abstractmethod
    def list(self, options: dict[str, Any]) -> JobList:
        """The target's jobs, without their tasks."""

    def place(self) -> Any:
        """Where the target's jobs run, for a target whose tasks run elsewhere: what tells one place
        from another (`pmlctl plan` keys its calibrations by it)."""
        return None

    def wait(self, handle: Handle, timeout: float | None) -> Outcome:
        """Follow the job to its end; after `timeout` seconds, the outcome says it timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = ""
        while True:
            status = self.status(handle)
            if status.phase != shown:
                self.events(PhaseChanged(handle.name, status.phase))
                shown = status.phase
            if status.finished:
                return Outcome(handle.name, status.phase, _why(status), status.exit_code, model_dir=status.model_dir)
            if deadline is not None and time.monotonic() >= deadline:
                return Outcome(
                    handle.name,
                    status.phase,
                    f"job {handle.name} still {status.phase} after {timeout:g}s; wait longer with --timeout",
                    timed_out=True,
                )
            time.sleep(
                self.poll_seconds if deadline is None else max(min(self.poll_seconds, deadline - time.monotonic()), 0)
            )


# TaskStatus.ended of a task its supervisor stopped (local, docker).
ON_SIGTERM, KILLED = "on SIGTERM", "killed"
STOPPED = (ON_SIGTERM, KILLED)


def _why(status: JobStatus) -> str:
    """Why a finished job did not succeed, in one line: what refused it, or its failed task's last words."""
    if status.phase == SUCCEEDED:
        return ""
    if status.problem:
        return status.problem
    code = "" if status.exit_code is None else f" (exit code {status.exit_code})"
    failed = next(
        (
            t
            # The task that failed the job by itself, with the job's exit code, says why; of those, the
            # chief says the most. A task stopped because another failed says nothing about it.
            for t in sorted(
                status.tasks, key=lambda t: (t.ended in STOPPED or t.exit_code != status.exit_code, t.role != "chief")
            )
            if t.phase == FAILED and t.message
        ),
        None,
    )
    said = f": {failed.label}: {failed.message}" if failed else ""
    return f"job {status.name} {'failed' if status.phase == FAILED else 'was cancelled'}{code}{said}"
