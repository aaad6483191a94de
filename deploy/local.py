"""The local target: every task of a job as a process on 127.0.0.1, supervised.

The tasks share a network namespace of the job's own, with loopback only (deploy/netns.py):
TensorFlow's servers listen on every interface, and must not be open to the machine's networks.

The supervisor restarts a task that dies with a retryable exit code (a signal, or 128 and above:
the same rule as TFJob's `restartPolicy: ExitCode`), keeps its address so that the coordinator
takes it back, and makes sure that no process it started outlives the job.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from deploy import jobs, netns, redact
from deploy.spec import JobSpec
from trainer import exits, storage
from trainer.tf_config import build

SHUTDOWN_GRACE = 90.0  # servers watch the chief once a second and must be gone well within this
KILL_GRACE = 30.0  # Kubernetes' default terminationGracePeriodSeconds
# absl's own INFO/WARNING lines (and its note about them) are kept in the log files only.
NOISE = re.compile(r"^(WARNING: All log messages before absl|[IW]\d{4} |\S+\.cc:\d+\] )")


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


@dataclass
class Plan:
    spec: JobSpec
    cluster: dict[str, list[str]]
    tasks: list[Task] = field(default_factory=list)


def plan(spec: JobSpec, job_dir: pathlib.Path, cpus: list[int] | None = None) -> Plan:
    """Ports, TF_CONFIG, command and environment of every task; nothing is started.

    `cpus` pins every task to those CPUs (the trainer's thread pools are sized by its flags)."""
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


def describe(p: Plan) -> str:
    """The dry run: the cluster and, per task, its command and environment, secrets hidden."""
    lines = [f"job {p.spec.name}: local processes", "cluster:"]
    lines += [f"  {role}: {', '.join(addrs)}" for role, addrs in p.cluster.items()]
    for t in p.tasks:
        lines.append(f"{t.label}:")
        lines.append("  command: " + redact.text(" ".join(t.argv)))
        lines += [f"  env {k}={redact.value(k, v)}" for k, v in sorted(t.env.items())]
    return "\n".join(lines)


class Supervisor:
    target = "local"  # in job.json; the docker target's supervisor runs containers instead
    isolated = True  # the tasks run in a network namespace of the job's own (the docker CLI does not)

    def __init__(self, p: Plan, job_dir: pathlib.Path, max_restarts: int, verbose: bool, echo: bool = True):
        """`echo` False keeps the tasks' output in their log files only (sweeps print progress)."""
        self.plan, self.job_dir, self.max_restarts, self.verbose = p, job_dir, max_restarts, verbose
        self.echo = echo
        self.restarts = 0
        self.status = "running"
        self._out = threading.Lock()
        self.network = "private" if self.isolated else "container"
        self.namespace: netns.Namespace | None = None

    def run(self) -> int:
        """Start every task, supervise them, and return the chief's exit code."""
        self.job_dir.mkdir(parents=True, exist_ok=True)
        chief = next(t for t in self.plan.tasks if t.role == "chief")
        if self.isolated:
            self._isolate()
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            for task in self.plan.tasks:
                self._start(task)
            self._save()
            code = self._supervise(chief)
            self.status = "succeeded" if code == 0 else "failed"
            # After success the servers must end by themselves; after a failure they are asked to.
            self._shutdown(grace=SHUTDOWN_GRACE if code == 0 else KILL_GRACE, ask_first=code != 0)
            return code
        except KeyboardInterrupt:
            self.status = "interrupted"
            self._say("interrupted: stopping every task")
            self._shutdown(grace=KILL_GRACE, ask_first=True)
            return exits.INTERRUPTED
        finally:
            self._save()
            if self.namespace:
                self.namespace.close()

    def _isolate(self) -> None:
        """Make the job's network namespace, with relays to the loopback services the tasks name
        (storage servers on this machine); or, with PML_LOCAL_NETWORK=host, say what that means."""
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
            time.sleep(0.2)

    def _start(self, task: Task) -> None:
        task.exit_code, task.ended = None, ""
        log = open(task.log, "ab")
        task.proc = subprocess.Popen(
            task.argv, env={**os.environ, **task.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=functools.partial(_prepare_child, task.cpus, self.namespace))
        task.cpus_allowed = sorted(os.sched_getaffinity(task.proc.pid))
        self._say(f"started {task.label} (pid {task.proc.pid}) at {task.address}")
        threading.Thread(target=self._pump, args=(task, task.proc, log), daemon=True).start()

    def _pump(self, task: Task, proc: subprocess.Popen, log) -> None:
        """Copy a task's output to its log file, and to the terminal with a role prefix."""
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
        jobs.write_state(self.job_dir, {
            "name": self.plan.spec.name, "target": self.target, "status": self.status,
            "supervisor_pid": os.getpid(), "model_dir": storage.absolute(self.plan.spec.model_dir),
            # `pmlctl artifacts` may run later from a shell without AWS_ENDPOINT_URL.
            "s3_endpoint": redact.text(self.plan.spec.trainer.s3_endpoint or self.plan.spec.env.get(
                "AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL")) or "") or None,
            "restarts": self.restarts, "cluster": self.plan.cluster, "network": self.network,
            "tasks": [{"role": t.role, "index": t.index, "address": t.address,
                       "pid": t.proc.pid if t.proc else None, "restarts": t.restarts, "cpus": t.cpus_allowed,
                       "exit_code": t.exit_code, "ended": t.ended, "log": str(t.log)}
                      for t in self.plan.tasks],
        })

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


def _raise_interrupt(*_):
    raise KeyboardInterrupt


_PR_SET_PDEATHSIG = 1


def _prepare_child(cpus: list[int] | None, namespace: netns.Namespace | None = None) -> None:
    """In the child, before exec: get SIGKILL if the supervisor dies, even by SIGKILL, so nothing
    is orphaned; stay on `cpus` when given; and enter the job's network namespace."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if cpus:
        os.sched_setaffinity(0, cpus)
    if namespace:
        namespace.enter()
