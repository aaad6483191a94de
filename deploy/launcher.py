"""The launcher contract: what a target whose jobs a supervisor on this machine runs must decide.

The local and docker targets share one machinery (deploy/local.py `SupervisedTarget`, and the
supervisor of deploy/supervisor.py): `pmlctl submit` starts a supervisor process, which starts
every task, restarts the retryable ones, keeps job.json and output.log, and is stopped by
`pmlctl delete`. What differs between them is only where the tasks run and how they reach each
other, and these hooks are that difference. Each is abstract, so a new launcher (tasks over SSH
on other hosts, a Ray cluster) has to choose every one of them: none silently inherits the local
target's loopback networking.

What the shared machinery assumes of every launcher, whatever the hooks do:
- each task is one child process of the supervisor (a trainer, or a client that stands for the
  task: `docker run` attached, `ssh` with a tty) whose exit code is the task's;
- SIGTERM and SIGKILL to that child's process group reach the task (the supervisor stops a job
  with them, and a client that stands for a task must pass them on: `docker run` does);
- its pid is a pid on this machine, which `pmlctl delete` and `status` check;
- its output is the task's log.

The pmlctl half is `Launcher`; the supervisor half is `SupervisorHooks`.
"""

from __future__ import annotations

import pathlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deploy.spec import JobSpec
    from deploy.supervisor import Plan


class Launcher(ABC):
    """The hooks `pmlctl` calls, on the target's side."""

    @property
    @abstractmethod
    def supervisor(self) -> str:
        """The module run as `python -m MODULE` to supervise a job: it must call
        `deploy.supervisor.supervise` with its `SupervisorHooks` class. Local: deploy.supervisor."""

    @abstractmethod
    def planner(self, spec: JobSpec, job_dir: pathlib.Path, cpus: list[int] | None = None) -> Plan:
        """Every task's address, TF_CONFIG, command and environment; nothing starts. The addresses
        decide the networking: the local planner gives each task a free port on 127.0.0.1, which
        only works while every task shares this machine's loopback (one network namespace); docker
        names each container on the job's own network. `cpus`, where given, pins every task."""

    @abstractmethod
    def ship(self, plan: Plan) -> None:
        """Before the supervisor starts, after `preflight`: put the task module's code
        (`plan.shipment`, None for the built-in models) where the plan's commands find it, fixed for
        the job's whole life, so that a restarted task runs the code of its submit whatever was
        edited since. Local: the workspace's read-only snapshot. Docker: the task image."""

    @abstractmethod
    def preflight(self) -> None:
        """Check, in pmlctl, what must hold before the supervisor starts, so that a refusal
        (`BadInput`, or `Unavailable` for a service that does not answer) reaches the user at once
        instead of ending up in job.json. Local: the network mode is valid. Docker: the daemon answers."""

    @abstractmethod
    def clean_up(self, name: str) -> None:
        """After `pmlctl delete` saw every task's process gone: remove what the job leaves outside
        its processes (docker: its containers and network), also when its supervisor was killed
        before it could. Local: nothing, a process leaves nothing once it is gone."""


class SupervisorHooks(ABC):
    """The hooks the supervisor calls, in its own process (`python -m MODULE`)."""

    @property
    @abstractmethod
    def target(self) -> str:
        """The target's name, written to job.json: the commands after submit find the job by it."""

    @property
    @abstractmethod
    def kind(self) -> str:
        """How its tasks run, in `pmlctl status`: local, docker."""

    @property
    @abstractmethod
    def network(self) -> str:
        """Where the tasks' servers listen, in job.json: "private" (a namespace of the job's own,
        loopback only), "host" (this machine's own interfaces), "container" (each its own)."""

    @abstractmethod
    def prepare(self) -> None:
        """Before the first task starts, make what the tasks need around them. Local: the job's
        network namespace with only loopback (deploy/netns.py), since TensorFlow's servers listen
        on every interface without authentication; each task enters it between fork and exec.
        Docker: the job's network, after what an earlier run of it left. A refusal here
        (`BadInput`, `Unavailable`) fails the job before any task starts, in one line."""

    @abstractmethod
    def release(self) -> None:
        """After the last task ended, whatever happened, `prepare` failing halfway included: undo
        what it made (local: close the namespace's handles; docker: remove containers and network)."""
