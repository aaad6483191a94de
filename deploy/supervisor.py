"""A job's supervisor: a process of its own (`python -m deploy.supervisor` for a local job, the
launcher's module for the others: deploy/launcher.py), started by `pmlctl submit` and given the
plan on its standard input (secrets included, so never on disk or a command line).

It writes what it knows to `job.json` and what it prints to `output.log` in the job's folder
(deploy/jobs.py), so that `status`, `logs`, `wait` and `delete` work the same from any terminal,
the submitting one included: that one follows `output.log` until the job ends. The supervisor is
attached to `pmlctl submit`: it gets SIGTERM when pmlctl dies (`PR_SET_PDEATHSIG`), and pmlctl
passes Ctrl-C and SIGTERM on to it.

The supervisor restarts a task that dies with a retryable exit code (a signal, or 128 and above:
the same rule as TFJob's `restartPolicy: ExitCode`), keeps its address so that the coordinator
takes it back, and makes sure that no process it started outlives the job. The local supervisor
runs every task in a network namespace of the job's own, with loopback only (deploy/netns.py):
TensorFlow's servers listen on every interface, and must not be open to the machine's networks.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from deploy import jobs, redact, view
from deploy.launcher import SupervisorHooks
from deploy.spec import JobSpec
from deploy.target import CANCELLED, FAILED, KILLED, ON_SIGTERM, PENDING, RUNNING, SUCCEEDED, JobStatus, TaskStatus
from deploy.target import Plan as PlanBase
from deploy.workspaces import Shipment
from pml_trainer import exits, storage
from pml_trainer.errors import BadInput, Unavailable

SHUTDOWN_GRACE = 90.0  # servers watch the chief once a second and must be gone well within this
KILL_GRACE = exits.GRACE_SECONDS
# A server exits 4 when its chief said it failed (the chief then exits within its 5 s linger for
# their acknowledgements: trainer/train.py) or when it lost the chief for --orphan-timeout. A chief
# still running this long after a server's 4 is the latter: it would wait for that server in vain.
ABANDONED_GRACE = 15.0
# absl's own INFO/WARNING lines (and its note about them) are kept in the log files only.
NOISE = re.compile(r"^(WARNING: All log messages before absl|[IW]\d{4} |\S+\.cc:\d+\] )")
OUTPUT = "output.log"  # what the supervisor printed: every task's lines with their prefix, and its own
# Written by `pmlctl delete` before it stops the supervisor, which then stops without a word: the
# job is being forgotten, and its terminal must not fill with the tasks' farewells.
DELETING = "deleting"


@dataclass
class Task:
    role: str
    index: int
    address: str
    env: dict[str, str]
    argv: list[str]
    log: pathlib.Path
    cpus: list[int] | None = None  # CPU affinity, for sweeps over cores
    proc: subprocess.Popen | None = None
    restarts: int = 0
    cpus_allowed: list[int] = field(default_factory=list)  # as the kernel reports it for the process
    exit_code: int | None = None
    ended: str = ""  # "by itself" or "terminated"

    @property
    def label(self) -> str:
        return f"{self.role}-{self.index}"

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "index": self.index,
            "address": self.address,
            "env": self.env,
            "argv": self.argv,
            "log": str(self.log),
            "cpus": self.cpus,
        }

    def status(self) -> TaskStatus:
        running = self.proc is not None and self.exit_code is None
        phase = "NoPod" if self.proc is None else RUNNING if running else SUCCEEDED if self.exit_code == 0 else FAILED
        return TaskStatus(
            self.role,
            self.index,
            phase,
            self.address,
            self.restarts,
            self.exit_code,
            ended=self.ended,
            pid=self.proc.pid if self.proc else None,
            cpus=self.cpus_allowed,
            log=str(self.log),
        )


@dataclass
class Plan(PlanBase):
    spec: JobSpec
    cluster: dict[str, list[str]]
    tasks: list[Task] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # the target's: max_restarts, verbose
    shipment: Shipment | None = None  # the task module's workspace, for pmlctl only: the launcher ships it

    def describe(self) -> str:
        """The dry run: the cluster and, per task, its command and environment, secrets hidden."""
        lines = [f"job {self.spec.name}: local processes", "cluster:"]
        lines += [f"  {role}: {', '.join(addrs)}" for role, addrs in self.cluster.items()]
        if self.shipment:
            made = "" if self.shipment.snapshot.is_dir() else " (copied at submit)"
            lines.append(
                f"code: workspace {self.shipment.source} ({self.shipment.code_digest}), every task run from "
                f"its read-only snapshot {self.shipment.snapshot}{made}"
            )
        for t in self.tasks:
            lines.append(f"{t.label}:")
            lines.append("  command: " + redact.text(" ".join(t.argv)))
            lines += [f"  env {k}={redact.value(k, v)}" for k, v in sorted(t.env.items())]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.model_dump(mode="json"),
            "cluster": self.cluster,
            "tasks": [t.to_json() for t in self.tasks],
            "options": self.options,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Plan:
        tasks = [Task(**{**t, "log": pathlib.Path(t["log"])}) for t in doc["tasks"]]
        return cls(JobSpec.model_validate(doc["spec"]), doc["cluster"], tasks, doc["options"])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Supervisor(SupervisorHooks):
    """Runs one job to its end; what it prepares around the tasks is its launcher's
    (`SupervisorHooks`, deploy/launcher.py)."""

    def __init__(self, plan: Plan, job_dir: pathlib.Path, *, max_restarts: int, verbose: bool):
        self.plan, self.job_dir, self.max_restarts, self.verbose = plan, job_dir, max_restarts, verbose
        self.echo = True  # off once `pmlctl delete` stops the job: the tasks' lines then stay in their logs
        self.restarts = 0
        self.phase = PENDING
        self.exit_code: int | None = None
        self.problem: str | None = None  # a refusal before any task started
        self.deleted = False
        self.created = _now()
        self._stopping = False
        self._out = threading.Lock()
        self.namespace = None  # a netns.Namespace every task enters, where the launcher makes one

    def run(self) -> int:
        """Start every task, supervise them, and return the chief's exit code."""
        self.job_dir.mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._interrupt)
        self._save()
        try:
            self.prepare()
            chief = next(t for t in self.plan.tasks if t.role == "chief")
            for task in self.plan.tasks:
                self._start(task)
            self.phase = RUNNING
            self._save()
            code = self._supervise(chief)
            self.phase = SUCCEEDED if code == 0 else FAILED
            # After success the servers must end by themselves; after a failure they are asked to.
            self._shutdown(grace=SHUTDOWN_GRACE if code == 0 else KILL_GRACE, ask_first=code != 0)
        except (BadInput, Unavailable) as err:  # no task started: the job is refused; pmlctl says why in one line
            self.phase, self.problem, code = FAILED, str(err), err.exit_code
        except KeyboardInterrupt:
            self.phase, code = CANCELLED, exits.INTERRUPTED
            self._say("interrupted: stopping every task")
            self._shutdown(grace=KILL_GRACE, ask_first=True)
        finally:
            self._stopping = True  # a signal from here on would only cut the last record short
            self.release()
        self.exit_code = code
        self._save()
        return code

    def _interrupt(self, *_) -> None:
        """SIGINT or SIGTERM: stop every task, once (a second Ctrl-C must not cut the shutdown short)."""
        if self._stopping:
            return
        self._stopping = True
        if (self.job_dir / DELETING).exists():
            self.deleted, self.echo = True, False
        raise KeyboardInterrupt

    def _supervise(self, chief: Task) -> int:
        abandoned: Task | None = None  # a server that gave up on the chief, and when
        abandoned_at = 0.0
        while True:
            for task in self.plan.tasks:
                code = task.proc.poll() if task.exit_code is None else None
                if code is None:
                    continue
                task.exit_code = code
                if task is chief and code == 0:
                    task.ended = "by itself"
                    return 0
                if code in (0, exits.CHIEF_FAILED):  # for the latter, the chief's own exit tells why
                    task.ended = "by itself"
                    if code and task.role in ("worker", "ps") and abandoned is None:
                        abandoned, abandoned_at = task, time.monotonic()
                elif exits.is_retryable(code) and self.restarts < self.max_restarts:
                    self.restarts += 1
                    task.restarts += 1
                    self._say(
                        f"{task.label} exited with {_code(code)}; restarting it "
                        f"({self.restarts}/{self.max_restarts} restarts)"
                    )
                    self._start(task)
                else:
                    task.ended = "by itself"
                    why = "out of restarts" if exits.is_retryable(code) else "a permanent failure"
                    self._say(f"{task.label} exited with {_code(code)} ({why}): the job failed")
                    # The job ends with the code of the task that failed it, unless the chief
                    # already said more: a task module every task loads fails them all with 2.
                    return code if task is chief else (chief.exit_code or code)
                self._save()
            if abandoned and chief.exit_code is None and time.monotonic() - abandoned_at > ABANDONED_GRACE:
                # The chief still runs, cut off from that server for longer than --orphan-timeout.
                # The server is not restarted: the job has failed, as a TFJob does once a replica
                # failed for good (Kubeflow's training-operator, tfjob_controller.go, UpdateJobStatus).
                self._say(
                    f"{abandoned.label} exited with code {exits.CHIEF_FAILED}: it lost the chief for longer "
                    "than --orphan-timeout; the job failed"
                )
                return exits.CHIEF_FAILED
            time.sleep(0.2)

    def _start(self, task: Task) -> None:
        task.exit_code, task.ended = None, ""
        log = open(task.log, "ab")
        task.proc = subprocess.Popen(
            task.argv,
            env={**os.environ, **task.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=functools.partial(_prepare_child, load_libc(), task.cpus, self.namespace),
        )
        task.cpus_allowed = sorted(os.sched_getaffinity(task.proc.pid))
        self._say(f"started {task.label} (pid {task.proc.pid}) at {task.address}")
        threading.Thread(target=self._pump, args=(task, task.proc, log), daemon=True).start()

    def _pump(self, task: Task, proc: subprocess.Popen, log) -> None:
        """Copy a task's output to its log file, and to the job's output with a role prefix."""
        fold = view.Fold()  # TensorFlow's repeats, when a peer stays away, in one line per burst
        with log:
            for raw in proc.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                if line and (self.verbose or not NOISE.match(line)):
                    self._echo(task, [line] if self.verbose else fold.line(line))
        self._echo(task, fold.end())

    def _echo(self, task: Task, lines: list[str]) -> None:
        if self.echo and lines:
            with self._out:
                print("".join(f"{task.label:>11} | {line}\n" for line in lines), end="", flush=True)

    def _shutdown(self, grace: float, ask_first: bool = False) -> None:
        """Let every task end by itself within `grace` s (asking with SIGTERM first if told),
        then kill what is left. Nothing the supervisor started survives this."""
        alive = [t for t in self.plan.tasks if t.proc and t.proc.poll() is None]
        if ask_first:
            for t in alive:
                _signal(t, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for t in alive:
            try:
                t.proc.wait(timeout=max(deadline - time.monotonic(), 0))
                t.ended = ON_SIGTERM if ask_first else "by itself"
            except subprocess.TimeoutExpired:
                self._say(f"{t.label} did not end within {grace:.0f}s; killing it")
                _signal(t, signal.SIGKILL)
                t.proc.wait()
                t.ended = KILLED
        for t in self.plan.tasks:
            if t.proc and t.exit_code is None:
                t.exit_code = t.proc.wait()
                t.ended = t.ended or "by itself"

    def _save(self) -> None:
        spec = self.plan.spec
        jobs.write(
            self.job_dir,
            JobStatus(
                spec.name,
                self.target,
                self.phase,
                self.kind,
                created=self.created,
                model_dir=storage.absolute(spec.model_dir),
                experiment=spec.experiment,
                exit_code=self.exit_code,
                problem=self.problem,
                tasks=[t.status() for t in self.plan.tasks],
                details={
                    "supervisor_pid": os.getpid(),
                    "restarts": self.restarts,
                    "cluster": self.plan.cluster,
                    "network": self.network,
                    "deleted": self.deleted,
                    # `pmlctl artifacts` may run later from a shell without AWS_ENDPOINT_URL.
                    "s3_endpoint": redact.text(
                        spec.trainer.s3_endpoint
                        or spec.env.get("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL"))
                        or ""
                    )
                    or None,
                },
            ),
        )

    def _say(self, message: str) -> None:
        if not self.echo:
            return
        with self._out:
            print(f"{'pmlctl':>11} | {message}", flush=True)


class LocalSupervisor(Supervisor):
    """Every task a process on this machine, all in one network namespace of the job's own with
    loopback only (or, with PML_LOCAL_NETWORK=host, in this machine's own): the plan's
    127.0.0.1 addresses work there and nowhere else."""

    target = "local"
    kind = "local"
    network = "private"

    def prepare(self) -> None:
        """Make the job's network namespace, with relays to the loopback services the tasks name
        (storage servers on this machine); or, with PML_LOCAL_NETWORK=host, say what that means."""
        from deploy import netns  # here, not at the top: ctypes is slow to import

        self.network = netns.mode()
        if self.network == "host":
            self._say(
                f"{netns.MODE_VARIABLE}=host: the job's TensorFlow servers listen on every interface of "
                "this machine, without authentication; use it only on a network you trust"
            )
            return
        own = {int(a.rpartition(":")[2]) for addresses in self.plan.cluster.values() for a in addresses}
        own |= {port + 1 for port in own}  # the chief's state port (and a margin: never a storage port)
        texts = [
            text
            for t in self.plan.tasks
            for text in (*t.argv, *(v for k, v in {**os.environ, **t.env}.items() if k != "TF_CONFIG"))
        ]
        self.namespace = netns.Namespace(
            netns.loopback_endpoints(texts, own), [(server, 53) for server in netns.loopback_name_servers()]
        )
        relayed = ", ".join(f"{h}:{p}" for h, p in self.namespace.endpoints) or "none"
        self._say(
            f"the job has a network namespace of its own; loopback services relayed: {relayed}; "
            f"other addresses: {self.namespace.outbound}"
        )

    def release(self) -> None:
        if self.namespace:
            self.namespace.close()


def _code(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"


def _signal(task: Task, sig: int) -> None:
    try:
        os.killpg(task.proc.pid, sig)  # the task's whole process group: TF may fork helpers
    except ProcessLookupError:
        pass


PR_SET_PDEATHSIG = 1


def load_libc():
    """The C library, for prctl(2); loaded before a fork, so that the child only calls it."""
    import ctypes  # here, not at the top: pmlctl --help loads this module

    return ctypes.CDLL(None, use_errno=True)


def _prepare_child(libc, cpus: list[int] | None, namespace=None) -> None:
    """In the child, before exec: get SIGKILL if the supervisor dies, even by SIGKILL, so nothing
    is orphaned; stay on `cpus` when given; and enter the job's network namespace."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if cpus:
        os.sched_setaffinity(0, cpus)
    if namespace:
        namespace.enter()


def supervise(supervisor: type[Supervisor]) -> None:
    """`python -m deploy.supervisor` (or a launcher's module): run the job given on standard input."""
    plan = Plan.from_json(json.load(sys.stdin))
    sys.exit(
        supervisor(
            plan,
            jobs.job_dir(plan.spec.name),
            max_restarts=plan.options["max_restarts"],
            verbose=plan.options["verbose"],
        ).run()
    )


if __name__ == "__main__":
    supervise(LocalSupervisor)
