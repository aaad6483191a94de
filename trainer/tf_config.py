"""TF_CONFIG: parse it, refuse a bad one in one clear line, and build one.

Free of TensorFlow on purpose: the trainer checks its TF_CONFIG before paying for the import,
and the control plane builds every task's TF_CONFIG with `build`.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from pml_trainer.errors import BadInput

ROLES = ("chief", "worker", "ps", "evaluator")
CHIEF_ALIASES = {"master": "chief"}  # TFJob and Estimator call the chief "master"
EXAMPLE = '{"cluster": {"chief": ["host:2222"], "worker": ["host:2223"]}, "task": {"type": "chief", "index": 0}}'


class BadTFConfig(BadInput):
    def __init__(self, problem: str, fix: str):
        super().__init__(f"TF_CONFIG: {problem}; {fix}")


@dataclass(frozen=True)
class TFConfig:
    """A validated TF_CONFIG. `cluster` uses the canonical role names of ROLES."""

    cluster: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def training_cluster(self) -> dict[str, list[str]]:
        """The jobs that take part in training; the evaluator only watches checkpoints."""
        return {role: tasks for role, tasks in self.cluster.items() if role != "evaluator" and tasks}

    @property
    def strategy(self) -> str:
        if self.cluster.get("ps"):
            return "parameter_server"
        if self.cluster.get("worker"):
            return "multi_worker_mirrored"
        return "default"

    def describe(self) -> str:
        """The job in its own words, not TensorFlow's (which calls a 6-worker ps job "1 replica")."""

        def count(role: str, one: str, many: str) -> str:
            n = len(self.cluster.get(role) or [])
            return f"{n} {one if n == 1 else many}"

        if self.strategy == "parameter_server":
            return (
                f"{count('worker', 'worker', 'workers')} and {count('ps', 'parameter server', 'parameter servers')}"
                ", asynchronous updates"
            )
        if self.strategy == "multi_worker_mirrored":
            replicas = len(self.training_cluster.get("chief", [])) + len(self.cluster["worker"])
            return f"{replicas} mirrored replicas (the chief and {count('worker', 'worker', 'workers')}), synchronous updates"
        return "one process"

    @property
    def is_chief(self) -> bool:
        """The task that writes checkpoints and metrics: the chief, or worker 0 without one."""
        if self.cluster.get("chief"):
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def chief_address(self) -> str:
        return (self.cluster.get("chief") or self.cluster["worker"])[0]

    @property
    def address(self) -> str:
        return self.cluster[self.task_type][self.task_index]


ALONE = TFConfig(cluster={"chief": ["localhost:0"]}, task_type="chief", task_index=0)


def parse(raw: str | None) -> TFConfig:
    """Parse TF_CONFIG. None or an empty value means one process alone."""
    if raw is None or not raw.strip():
        return ALONE
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as err:
        raise BadTFConfig(
            f"malformed JSON ({err.msg} at character {err.pos})", f"it must be a JSON object such as {EXAMPLE}"
        ) from None
    if not isinstance(doc, dict):
        raise BadTFConfig("not a JSON object", f"use an object such as {EXAMPLE}")
    cluster = _cluster(doc.get("cluster", {}))
    if not cluster:
        if doc.get("task"):
            raise BadTFConfig("a task is given but the cluster is empty", "list the cluster's addresses")
        return ALONE
    task = doc.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise BadTFConfig('missing "task"', 'add "task": {"type": ROLE, "index": N} naming this process')
    task_type = CHIEF_ALIASES.get(task["type"], task["type"])
    if task_type not in ROLES:
        raise BadTFConfig(f"unknown role {task['type']!r} in task.type", f"use one of {', '.join(ROLES)}")
    index = task.get("index", 0)
    if isinstance(index, str) and index.isascii() and index.isdigit():  # not "¹": int() refuses it
        index = int(index)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise BadTFConfig(f"task.index {index!r} is not a whole number", "use 0 for the first task of a role")
    if task_type not in cluster:
        if task_type == "evaluator":  # TF allows an evaluator outside the cluster: it joins nothing
            return TFConfig(cluster, task_type, index)
        raise BadTFConfig(
            f"task type {task_type!r} is not in the cluster", f"add it to cluster or use one of {', '.join(cluster)}"
        )
    if not 0 <= index < len(cluster[task_type]):
        raise BadTFConfig(
            f"task index {index} is out of range for {task_type!r}",
            f"it has {len(cluster[task_type])} task(s), indexed from 0",
        )
    return TFConfig(cluster, task_type, index)


def _cluster(raw: object) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise BadTFConfig('"cluster" is not an object', 'map each role to a list of "host:port"')
    if "chief" in raw and "master" in raw:
        raise BadTFConfig("both chief and master are given", "they name the same role: keep one")
    cluster: dict[str, list[str]] = {}
    for name, addresses in raw.items():
        role = CHIEF_ALIASES.get(name, name)
        if role not in ROLES:
            raise BadTFConfig(f"unknown role {name!r} in the cluster", f"use {', '.join(ROLES)} (or master)")
        if isinstance(addresses, str):
            addresses = [addresses]
        if not isinstance(addresses, list):
            raise BadTFConfig(f"cluster.{name} is not a list", 'give a list of "host:port"')
        for address in addresses:
            _check_address(name, address)
        cluster[role] = list(addresses)
    if len(cluster.get("chief", [])) > 1:
        raise BadTFConfig(f"{len(cluster['chief'])} chiefs in the cluster", "a job has exactly one chief")
    if len(cluster.get("evaluator", [])) > 1:
        raise BadTFConfig("more than one evaluator", "a job has at most one evaluator")
    if cluster.get("ps") and not cluster.get("worker"):
        raise BadTFConfig("ps tasks without workers", "add at least one worker, or drop the ps")
    if cluster.get("ps") and not cluster.get("chief"):
        raise BadTFConfig("ps tasks without a chief", "ParameterServerStrategy needs a chief to coordinate")
    return cluster


def _check_address(role: str, address: object) -> None:
    if not isinstance(address, str) or ":" not in address:
        raise BadTFConfig(f"address {address!r} of {role} is not host:port", 'write it as "host:2222"')
    host, _, port = address.rpartition(":")
    if not host:
        raise BadTFConfig(f"address {address!r} of {role} has no host", 'write it as "host:2222"')
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadTFConfig(f"port {port!r} in {address!r} of {role} is not a port", "use a number from 1 to 65535")


def build(cluster: dict[str, list[str]], task_type: str, task_index: int) -> str:
    """The TF_CONFIG for one task of `cluster`, as the trainer and TFJob read it."""
    doc = {
        "cluster": {role: tasks for role, tasks in cluster.items() if tasks},
        "task": {"type": task_type, "index": task_index},
    }
    return json.dumps(doc, separators=(",", ":"))


def control_address(chief_address: str) -> tuple[str, int]:
    """Where the chief serves its job state: the port after its TensorFlow port.

    Servers and the evaluator poll it to learn that training is over, so that they can exit by
    themselves instead of running until someone deletes them.
    """
    host, _, port = chief_address.rpartition(":")
    return host.strip("[]"), int(port) + 1


def listen_host(host: str) -> str:
    """The address a task's own endpoint binds, given its host in TF_CONFIG.

    A loopback host (a local job: 127.0.0.1, localhost, ::1) is bound as it is, so that nothing
    outside the machine reaches the endpoint. Any other host is a Service or container name that
    resolves to an address the task does not necessarily own (a ClusterIP), so every interface of
    the task's own network namespace is bound: the pod's or container's namespace, with
    NetworkPolicy or the Docker network around it, is what confines it there.
    (TensorFlow's own gRPC server cannot be told: it always binds 0.0.0.0; see deploy/netns.py.)
    """
    host = host.strip("[]")
    if host == "localhost":
        return "127.0.0.1"
    try:
        return host if ipaddress.ip_address(host).is_loopback else ""
    except ValueError:
        return ""
