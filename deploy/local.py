"""The local target: every task of a job as a process on 127.0.0.1, supervised.

The tasks share a network namespace of the job's own, with loopback only (deploy/netns.py):
TensorFlow's servers listen on every interface, and must not be open to the machine's networks.

A job's supervisor is a process of its own (`python -m deploy.local`), started by `pmlctl submit`
and given the plan on its standard input (secrets included, so never on disk or a command line).
It writes what it knows to `job.json` and what it prints to `output.log` in the job's folder
(deploy/jobs.py), so that `status`, `logs`, `wait` and `delete` work the same from any terminal,
the submitting one included: that one follows `output.log` until the job ends. The supervisor is
attached to `pmlctl submit`: it gets SIGTERM when pmlctl dies (`PR_SET_PDEATHSIG`), and pmlctl
passes Ctrl-C and SIGTERM on to it.

The supervisor restarts a task that dies with a retryable exit code (a signal, or 128 and above:
the same rule as TFJob's `restartPolicy: ExitCode`), keeps its address so that the coordinator
takes it back, and makes sure that no process it started outlives the job.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from deploy import jobs, redact
from deploy.spec import JobSpec
from deploy.target import (CANCELLED, FAILED, FINISHED, PENDING, RUNNING, SUCCEEDED, Handle, JobList, JobStatus,
                           Knowledge, Option, Outcome, Plan as PlanBase, Target, TaskStatus)
from trainer import exits, storage
from trainer.errors import BadInput
from trainer.log import message_of
from trainer.tf_config import build

SHUTDOWN_GRACE = 90.0  # servers watch the chief once a second and must be gone well within this
KILL_GRACE = 30.0  # Kubernetes' default terminationGracePeriodSeconds
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
LOG_TAIL = 65536  # how much of a task's log is read for its last error line


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
        return {"role": self.role, "index": self.index, "address": self.address, "env": self.env, "argv": self.argv,
                "log": str(self.log), "cpus": self.cpus}

    def status(self) -> TaskStatus:
        running = self.proc is not None and self.exit_code is None
        phase = "NoPod" if self.proc is None else RUNNING if running else SUCCEEDED if self.exit_code == 0 else FAILED
        return TaskStatus(self.role, self.index, phase, self.address, self.restarts, self.exit_code, ended=self.ended,
                          pid=self.proc.pid if self.proc else None, cpus=self.cpus_allowed, log=str(self.log))


@dataclass
class Plan(PlanBase):
    spec: JobSpec
    cluster: dict[str, list[str]]
    tasks: list[Task] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # the target's: max_restarts, verbose

    def describe(self) -> str:
        """The dry run: the cluster and, per task, its command and environment, secrets hidden."""
        lines = [f"job {self.spec.name}: local processes", "cluster:"]
        lines += [f"  {role}: {', '.join(addrs)}" for role, addrs in self.cluster.items()]
        for t in self.tasks:
            lines.append(f"{t.label}:")
            lines.append("  command: " + redact.text(" ".join(t.argv)))
            lines += [f"  env {k}={redact.value(k, v)}" for k, v in sorted(t.env.items())]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec.model_dump(mode="json"), "cluster": self.cluster,
                "tasks": [t.to_json() for t in self.tasks], "options": self.options}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Plan":
        tasks = [Task(**{**t, "log": pathlib.Path(t["log"])}) for t in doc["tasks"]]
        return cls(JobSpec.model_validate(doc["spec"]), doc["cluster"], tasks, doc["options"])


def plan(spec: JobSpec, job_dir: pathlib.Path, cpus: list[int] | None = None) -> Plan:
    """Ports, TF_CONFIG, command and environment of every task; nothing is started.

    `cpus` pins every task to those CPUs (the trainer sizes its thread pools to them)."""
    cluster = spec.replicas.cluster(lambda role, _: f"127.0.0.1:{_free_port(pair=(role == 'chief'))}")
    trainer = spec.trainer.model_copy(update={"model_dir": storage.absolute(spec.model_dir)})
    argv = [sys.executable, "-u", "-m", "trainer", *trainer.to_argv()]
    result = Plan(spec, cluster)
    for role, addresses in cluster.items():
        for index, address in enumerate(addresses):
            env = {**spec.env, "TF_CONFIG": build(cluster, role, index), "PYTHONUNBUFFERED": "1"}
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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Supervisor:
    target = "local"  # in job.json; the docker target's supervisor runs containers instead
    kind = "local"
    isolated = True  # the tasks run in a network namespace of the job's own (the docker CLI does not)

    def __init__(self, p: Plan, job_dir: pathlib.Path, max_restarts: int, verbose: bool):
        self.plan, self.job_dir, self.max_restarts, self.verbose = p, job_dir, max_restarts, verbose
        self.echo = True  # off once `pmlctl delete` stops the job: the tasks' lines then stay in their logs
        self.restarts = 0
        self.phase = PENDING
        self.exit_code: int | None = None
        self.problem: str | None = None  # a refusal before any task started
        self.deleted = False
        self.created = _now()
        self._stopping = False
        self._out = threading.Lock()
        self.network = "private" if self.isolated else "container"
        self.namespace = None  # a netns.Namespace once made

    def run(self) -> int:
        """Start every task, supervise them, and return the chief's exit code."""
        self.job_dir.mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._interrupt)
        self._save()
        try:
            self._prepare()
            chief = next(t for t in self.plan.tasks if t.role == "chief")
            for task in self.plan.tasks:
                self._start(task)
            self.phase = RUNNING
            self._save()
            code = self._supervise(chief)
            self.phase = SUCCEEDED if code == 0 else FAILED
            # After success the servers must end by themselves; after a failure they are asked to.
            self._shutdown(grace=SHUTDOWN_GRACE if code == 0 else KILL_GRACE, ask_first=code != 0)
        except BadInput as err:  # no task started: the job is refused, and pmlctl says why in one line
            self.phase, self.problem, code = FAILED, str(err), err.exit_code
        except KeyboardInterrupt:
            self.phase, code = CANCELLED, exits.INTERRUPTED
            self._say("interrupted: stopping every task")
            self._shutdown(grace=KILL_GRACE, ask_first=True)
        finally:
            self._stopping = True  # a signal from here on would only cut the last record short
            self._release()
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

    def _prepare(self) -> None:
        if self.isolated:
            self._isolate()

    def _release(self) -> None:
        if self.namespace:
            self.namespace.close()

    def _isolate(self) -> None:
        """Make the job's network namespace, with relays to the loopback services the tasks name
        (storage servers on this machine); or, with PML_LOCAL_NETWORK=host, say what that means."""
        from deploy import netns  # here, not at the top: pmlctl --help loads this module, and ctypes is slow

        self.network = netns.mode()
        if self.network == "host":
            self._say(f"{netns.MODE_VARIABLE}=host: the job's TensorFlow servers listen on every interface of "
                      "this machine, without authentication; use it only on a network you trust")
            return
        own = {int(a.rpartition(":")[2]) for addresses in self.plan.cluster.values() for a in addresses}
        own |= {port + 1 for port in own}  # the chief's state port (and a margin: never a storage port)
        texts = [text for t in self.plan.tasks
                 for text in (*t.argv, *(v for k, v in {**os.environ, **t.env}.items() if k != "TF_CONFIG"))]
        self.namespace = netns.Namespace(netns.loopback_endpoints(texts, own),
                                         [(server, 53) for server in netns.loopback_name_servers()])
        relayed = ", ".join(f"{h}:{p}" for h, p in self.namespace.endpoints) or "none"
        self._say(f"the job has a network namespace of its own; loopback services relayed: {relayed}; "
                  f"other addresses: {self.namespace.outbound}")

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
                    self._say(f"{task.label} exited with {_code(code)}; restarting it "
                              f"({self.restarts}/{self.max_restarts} restarts)")
                    self._start(task)
                else:
                    task.ended = "by itself"
                    why = "out of restarts" if exits.is_retryable(code) else "a permanent failure"
                    self._say(f"{task.label} exited with {_code(code)} ({why}): the job failed")
                    return code if task is chief else (chief.exit_code or exits.FAILED)
                self._save()
            if abandoned and chief.exit_code is None and time.monotonic() - abandoned_at > ABANDONED_GRACE:
                # The chief still runs, cut off from that server for longer than --orphan-timeout.
                # The server is not restarted: the job has failed, as a TFJob does once a replica
                # failed for good (Kubeflow's training-operator, tfjob_controller.go, UpdateJobStatus).
                self._say(f"{abandoned.label} exited with code {exits.CHIEF_FAILED}: it lost the chief for longer "
                          "than --orphan-timeout; the job failed")
                return exits.CHIEF_FAILED
            time.sleep(0.2)

    def _start(self, task: Task) -> None:
        task.exit_code, task.ended = None, ""
        log = open(task.log, "ab")
        task.proc = subprocess.Popen(
            task.argv, env={**os.environ, **task.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=functools.partial(_prepare_child, _libc(), task.cpus, self.namespace))
        task.cpus_allowed = sorted(os.sched_getaffinity(task.proc.pid))
        self._say(f"started {task.label} (pid {task.proc.pid}) at {task.address}")
        threading.Thread(target=self._pump, args=(task, task.proc, log), daemon=True).start()

    def _pump(self, task: Task, proc: subprocess.Popen, log) -> None:
        """Copy a task's output to its log file, and to the job's output with a role prefix."""
        with log:
            for raw in proc.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                if self.echo and line and (self.verbose or not NOISE.match(line)):
                    with self._out:
                        print(f"{task.label:>11} | {line}", flush=True)

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
                t.ended = "on SIGTERM" if ask_first else "by itself"
            except subprocess.TimeoutExpired:
                self._say(f"{t.label} did not end within {grace:.0f}s; killing it")
                _signal(t, signal.SIGKILL)
                t.proc.wait()
                t.ended = "killed"
        for t in self.plan.tasks:
            if t.proc and t.exit_code is None:
                t.exit_code = t.proc.wait()
                t.ended = t.ended or "by itself"

    def _save(self) -> None:
        spec = self.plan.spec
        jobs.write(self.job_dir, JobStatus(
            spec.name, self.target, self.phase, self.kind, created=self.created,
            model_dir=storage.absolute(spec.model_dir), experiment=spec.experiment, exit_code=self.exit_code,
            problem=self.problem, tasks=[t.status() for t in self.plan.tasks],
            details={"supervisor_pid": os.getpid(), "restarts": self.restarts, "cluster": self.plan.cluster,
                     "network": self.network, "deleted": self.deleted,
                     # `pmlctl artifacts` may run later from a shell without AWS_ENDPOINT_URL.
                     "s3_endpoint": redact.text(spec.trainer.s3_endpoint or spec.env.get(
                         "AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL")) or "") or None}))

    def _say(self, message: str) -> None:
        if not self.echo:
            return
        with self._out:
            print(f"{'pmlctl':>11} | {message}", flush=True)


def _code(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"


def _signal(task: Task, sig: int) -> None:
    try:
        os.killpg(task.proc.pid, sig)  # the task's whole process group: TF may fork helpers
    except ProcessLookupError:
        pass


_PR_SET_PDEATHSIG = 1


def _libc():
    """The C library, for prctl(2); loaded before a fork, so that the child only calls it."""
    import ctypes  # here, not at the top: pmlctl --help loads this module

    return ctypes.CDLL(None, use_errno=True)


def _prepare_child(libc, cpus: list[int] | None, namespace=None) -> None:
    """In the child, before exec: get SIGKILL if the supervisor dies, even by SIGKILL, so nothing
    is orphaned; stay on `cpus` when given; and enter the job's network namespace."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if cpus:
        os.sched_setaffinity(0, cpus)
    if namespace:
        namespace.enter()


def _stop_with_parent(libc) -> None:
    """In the supervisor, before exec: SIGTERM when `pmlctl submit` dies, which stops the job cleanly."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(supervisor: type[Supervisor]) -> None:
    """`python -m deploy.local` (or deploy.docker): run the job given on standard input."""
    doc = json.load(sys.stdin)
    p = Plan.from_json(doc)
    sys.exit(supervisor(p, jobs.job_dir(p.spec.name), p.options["max_restarts"], p.options["verbose"]).run())


def alive(pid: Optional[int]) -> bool:
    """Is `pid` a live process (a zombie is not: it has ended, and waits for its parent to reap it)?"""
    if not pid:
        return False
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def last_error(log: pathlib.Path) -> str:
    """A failed task's reason: its last ERROR line (trainer/log.py) as `error: ...`, else its last line."""
    try:
        with open(log, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - LOG_TAIL, 0))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [f"error: {said[1]}" for said in map(message_of, lines) if said and said[0] == "ERROR"]
    return (errors or lines or [""])[-1]


class LocalTarget(Target):
    name = "local"
    summary = "processes on this machine"
    supervisor = "deploy.local"  # the module whose `python -m` supervises a job
    planner = staticmethod(plan)
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
    def knows(cls, name: str) -> Knowledge:
        record = jobs.read(name)
        return "yes" if record is not None and record.target == cls.name else "no"

    def plan(self, spec: JobSpec, options: dict[str, Any], cpus: Optional[list[int]] = None) -> Plan:
        result = self.planner(spec, jobs.job_dir(spec.name), cpus)
        result.options = options
        return result

    def preflight(self) -> None:
        """What must hold before the supervisor starts, checked where a refusal reaches the user at once."""
        from deploy import netns

        netns.mode()

    def submit(self, p: Plan) -> Handle:
        name = p.spec.name
        record = jobs.read(name)
        if record is not None and not record.finished and alive(record.details.get("supervisor_pid")):
            raise BadInput(f"job {name} is already running; pick another --name or `pmlctl delete {name}`")
        self.preflight()
        folder = jobs.job_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DELETING).unlink(missing_ok=True)
        with open(folder / OUTPUT, "wb") as output:
            proc = subprocess.Popen([sys.executable, "-m", self.supervisor], stdin=subprocess.PIPE, stdout=output,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=functools.partial(_stop_with_parent, _libc()))
        self._children[name] = proc
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._handlers.setdefault(sig, signal.signal(sig, self._pass_on))
        with proc.stdin:
            proc.stdin.write(json.dumps(p.to_json()).encode())

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
            record.problem = record.problem or (f"its supervisor (pid {record.details.get('supervisor_pid')}) ended "
                                                "without a word, killed; submit it again to resume")
        return record

    def status(self, handle: Handle) -> JobStatus:
        record = self._checked(self._record(handle.name))
        for task in record.tasks:
            if task.phase == FAILED and task.log:
                task.message = last_error(pathlib.Path(task.log))
        return record

    def logs(self, handle: Handle, role: Optional[str], index: int, follow: bool) -> Iterator[bytes]:
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

    def wait(self, handle: Handle, timeout: Optional[float]) -> Outcome:
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

    def delete(self, handle: Handle) -> Optional[str]:
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
        self._clean_up(name)
        shutil.rmtree(folder, ignore_errors=True)
        return f"every task stopped, its record removed; its model dir {record.model_dir} is kept"

    def _clean_up(self, name: str) -> None:
        """What a job leaves outside its processes once they are gone (docker: containers, a network)."""

    def list(self, options: dict[str, Any]) -> JobList:
        return JobList(self.name, "on this machine",
                       [self._checked(record) for record in jobs.every() if record.target == self.name])


if __name__ == "__main__":
    supervise(Supervisor)
