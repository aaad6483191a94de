"""The local target: every task of a job as a process on 127.0.0.1, supervised.

`SupervisedTarget` is the pmlctl half of every target whose jobs a supervisor on this machine runs
(deploy/supervisor.py): submit starts the supervisor, and status, logs, wait, delete and list read
what it keeps in the job's folder (deploy/jobs.py). What such a target must choose for itself is
the launcher contract (deploy/launcher.py); `LocalTarget` chooses loopback: a free port on
127.0.0.1 per task, and one network namespace for the job (deploy/netns.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from deploy import jobs, workspaces
from deploy.launcher import Launcher
from deploy.spec import JobSpec
from deploy.supervisor import DELETING, KILL_GRACE, OUTPUT, PR_SET_PDEATHSIG, SHUTDOWN_GRACE, Plan, Task, load_libc
from deploy.target import CANCELLED, FAILED, FINISHED, Handle, HoldsJob, JobList, JobStatus, Option, Outcome, Target
from pml_trainer import exits, storage, workspace
from pml_trainer.checkpoints import JOB_ENV
from pml_trainer.errors import BadInput
from pml_trainer.log import message_of
from pml_trainer.tf_config import build

LOG_TAIL = 65536  # how much of a task's log is read for its last error line


def plan(spec: JobSpec, job_dir: pathlib.Path, cpus: list[int] | None = None) -> Plan:
    """Ports, TF_CONFIG, command and environment of every task; nothing is started.

    `cpus` pins every task to those CPUs (the trainer sizes its thread pools to them)."""
    shipment = workspaces.shipment(spec)
    trainer = spec.trainer.model_copy(update={"model_dir": storage.absolute(spec.model_dir)})
    if shipment:
        # The tasks run on this Python (sys.executable): what it has installed is what they import.
        unmet = workspace.unmet_requirements(shipment.source)
        if unmet:
            raise BadInput(unmet)
        trainer = trainer.model_copy(update={"workspace": str(shipment.snapshot)})
    cluster = spec.replicas.cluster(lambda role, _: f"127.0.0.1:{_free_port(pair=(role == 'chief'))}")
    argv = [sys.executable, "-u", "-m", "pml_trainer", *trainer.to_argv()]
    result = Plan(spec, cluster, shipment=shipment)
    for role, addresses in cluster.items():
        for index, address in enumerate(addresses):
            env = {**spec.env, "TF_CONFIG": build(cluster, role, index), JOB_ENV: spec.name, "PYTHONUNBUFFERED": "1"}
            result.tasks.append(Task(role, index, address, env, argv, job_dir / f"{role}-{index}.log", cpus))
    return result


def _free_port(pair: bool) -> int:
    """A free port on 127.0.0.1; with `pair`, the next port is free too (the chief's state port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not pair or port >= 65535:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def _stop_with_parent(libc) -> None:
    """In the supervisor, before exec: SIGTERM when `pmlctl submit` dies, which stops the job cleanly."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def alive(pid: int | None) -> bool:
    """Is `pid` a live process (a zombie is not: it has ended, and waits for its parent to reap it)?"""
    if not pid:
        return False
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def last_error(log: pathlib.Path) -> str:
    """A failed task's reason: its last ERROR line (trainer/log.py) as `error: ...`, else its last line's message."""
    try:
        with open(log, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - LOG_TAIL, 0))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    said = [message_of(line) for line in lines]
    errors = [f"error: {message}" for level, message in filter(None, said) if level == "ERROR"]
    if errors:
        return errors[-1]
    if not lines:
        return ""
    # No ERROR line (a chief out of restarts after "lost a peer; exiting for a restart"): its last
    # words, without the time, level and task a log line carries.
    return said[-1][1] if said[-1] else lines[-1]


class SupervisedTarget(Target, Launcher):
    """A target whose jobs a supervisor process on this machine runs; the launcher's hooks
    (deploy/launcher.py) are left to each such target."""

    options = (
        Option("max-restarts", int, "Restarts of failed tasks before the job fails.", default=6, minimum=0),
        Option("verbose", bool, "Also show TensorFlow's own log lines.", default=False, short="-v"),
    )
    attached = True
    sees_local_files = True
    listed_by_default = True
    pins_cpus = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._children: dict[str, subprocess.Popen] = {}  # the supervisors this pmlctl started
        self._handlers: dict[int, Any] = {}  # the signal handlers to put back once they have ended

    @classmethod
    def knows(cls, name: str) -> HoldsJob:
        record = jobs.read(name)
        return "yes" if record is not None and record.target == cls.name else "no"

    def plan(self, spec: JobSpec, options: dict[str, Any], cpus: list[int] | None = None) -> Plan:
        result = self.planner(spec, jobs.job_dir(spec.name), cpus)
        result.options = options
        return result

    def submit(self, plan: Plan) -> Handle:
        name = plan.spec.name
        record = jobs.read(name)
        if record is not None and not record.finished and alive(record.details.get("supervisor_pid")):
            raise BadInput(f"job {name} is already running; pick another --name or `pmlctl delete {name}`")
        self.preflight()
        self.ship(plan)
        folder = jobs.job_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DELETING).unlink(missing_ok=True)
        with open(folder / OUTPUT, "wb") as output:
            proc = subprocess.Popen(
                [sys.executable, "-m", self.supervisor],
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=functools.partial(_stop_with_parent, load_libc()),
            )
        self._children[name] = proc
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._handlers.setdefault(sig, signal.signal(sig, self._pass_on))
        with proc.stdin:
            proc.stdin.write(json.dumps(plan.to_json()).encode())

        def recorded() -> bool:
            current = jobs.read(name)
            return current is not None and current.details.get("supervisor_pid") == proc.pid

        while proc.poll() is None and not recorded():  # the job exists for other commands once its supervisor says so
            time.sleep(0.02)
        return Handle(self.name, name)

    def _pass_on(self, sig: int, _frame) -> None:
        """Ctrl-C or SIGTERM to `pmlctl submit` stops its jobs, which say so as they end."""
        for proc in self._children.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    def handle(self, name: str, options: dict[str, Any]) -> Handle:
        return Handle(self.name, name)

    def _record(self, name: str) -> JobStatus:
        record = jobs.read(name)
        if record is None or record.target != self.name:
            raise BadInput(f"job {name} not found; `pmlctl list` shows the known jobs")
        return record

    def _running(self, record: JobStatus) -> bool:
        proc = self._children.get(record.name)
        return proc.poll() is None if proc else alive(record.details.get("supervisor_pid"))

    def _checked(self, record: JobStatus) -> JobStatus:
        """A record as it stands: a job whose supervisor was killed before it could say so has failed."""
        if not record.finished and not self._running(record):
            record.phase = FAILED
            record.problem = record.problem or (
                f"its supervisor (pid {record.details.get('supervisor_pid')}) ended "
                "without a word, killed; submit it again to resume"
            )
        return record

    def status(self, handle: Handle) -> JobStatus:
        record = self._checked(self._record(handle.name))
        for task in record.tasks:
            if task.phase == FAILED and task.log:
                task.message = last_error(pathlib.Path(task.log))
        return record

    def logs(self, handle: Handle, role: str | None, index: int, follow: bool) -> Iterator[bytes]:
        record = self._record(handle.name)
        if role is None:
            path = jobs.job_dir(handle.name) / OUTPUT
        else:
            task = next((t for t in record.tasks if (t.role, t.index) == (role, index)), None)
            if task is None:
                names = ", ".join(f"--role {t.role} --index {t.index}" for t in record.tasks)
                raise BadInput(f"job {handle.name} has no {role} {index}; it has {names}")
            path = pathlib.Path(task.log)
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 16)
                if chunk:
                    yield chunk
                elif not follow or not self._running(jobs.read(handle.name) or record):
                    yield f.read()  # what came between the last read and the end
                    return
                else:
                    time.sleep(0.1)

    def wait(self, handle: Handle, timeout: float | None) -> Outcome:
        if handle.name not in self._children:  # one this pmlctl started may have been deleted meanwhile
            self._record(handle.name)
        try:
            outcome = super().wait(handle, timeout)
        except BadInput:  # the record went: `pmlctl delete` removed the job meanwhile
            outcome = Outcome(handle.name, CANCELLED, exit_code=exits.INTERRUPTED)
        record = jobs.read(handle.name)
        if outcome.phase == CANCELLED and (record is None or record.details.get("deleted")):
            outcome.message = f"job {handle.name} was deleted (`pmlctl delete`); every task of it is stopped"
        if outcome.phase in FINISHED:
            self._reap(handle.name)
        return outcome

    def _reap(self, name: str) -> None:
        proc = self._children.pop(name, None)
        if proc is not None:
            proc.wait()
        if not self._children:
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            self._handlers.clear()

    def delete(self, handle: Handle) -> str | None:
        name = handle.name
        try:
            record = self._record(name)
        except BadInput:
            return None
        folder = jobs.job_dir(name)
        supervisor = record.details.get("supervisor_pid")
        if self._running(record):
            (folder / DELETING).touch()
            os.kill(supervisor, signal.SIGTERM)  # it stops every task, quietly (DELETING)
        deadline = time.monotonic() + KILL_GRACE + SHUTDOWN_GRACE
        while self._running(record) or any(alive(t.pid) for t in record.tasks):
            if time.monotonic() > deadline:  # a supervisor that does not stop: what it would have done
                for pid in filter(alive, [supervisor, *(t.pid for t in record.tasks)]):
                    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
            record = jobs.read(name) or record  # a task restarted meanwhile has another pid
        self._reap(name)
        self.clean_up(name)
        shutil.rmtree(folder, ignore_errors=True)
        return f"every task stopped, its record removed; its model dir {record.model_dir} is kept"

    def list(self, options: dict[str, Any]) -> JobList:
        return JobList(
            self.name,
            "on this machine",
            [self._checked(record) for record in jobs.every() if record.target == self.name],
        )


class LocalTarget(SupervisedTarget):
    name = "local"
    summary = "processes on this machine"
    supervisor = "deploy.supervisor"
    planner = staticmethod(plan)

    def preflight(self) -> None:
        from deploy import netns

        netns.mode()

    def ship(self, plan: Plan) -> None:
        if plan.shipment:
            plan.shipment.make_snapshot()

    def clean_up(self, name: str) -> None:
        pass  # a job's processes leave nothing behind once they are gone
