"""What a job on Kubernetes is doing, read from the objects the API server serves.

Pure functions over the JSON of a TFJob (or of a native job's Jobs) and of its pods, so that
`status`, `wait` and `list` agree on one reading. Success means the chief completed, in both
modes: the TFJob's Succeeded condition (the operator sets it when the chief ends with 0), or the
native chief Job's Complete condition.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

JOB_LABEL = "parallel-ml/job"
ROLE_LABEL = "parallel-ml/role"
INDEX_LABELS = ("parallel-ml/index", "training.kubeflow.org/replica-index")  # native, TFJob
CONTAINER = "tensorflow"
ROLES = ("chief", "worker", "ps", "evaluator")  # the order tasks are shown in
PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")
# A cluster autoscaler needs a few minutes to add a node; after that, Unschedulable is for good.
UNSCHEDULABLE_GRACE = datetime.timedelta(minutes=5)


@dataclass
class Replica:
    role: str
    index: int
    pod: str = ""
    phase: str = "NoPod"
    restarts: int = 0
    exit_code: Optional[int] = None
    reason: str = ""
    message: str = ""
    since: str = ""  # when the reason began (Unschedulable)

    @property
    def label(self) -> str:
        return f"{self.role}-{self.index}"


@dataclass
class JobState:
    name: str
    namespace: str
    mode: str
    phase: str  # Pending, Running, Restarting, Succeeded or Failed
    created: str
    conditions: list[dict[str, str]] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def problem(self, now: datetime.datetime) -> str | None:
        """Why the job cannot go on although it has not failed, as one line with the fix."""
        for r in self.replicas:
            if r.reason in PULL_ERRORS:
                return (f"pod {r.pod} ({r.label}) cannot pull its image: {r.reason}: {r.message}; on kind load it with "
                        "`kind load docker-image IMAGE --name pml` (`pmlctl cluster up` does), elsewhere push it to a "
                        "registry the nodes can reach and pass --image")
            if r.reason == "Unschedulable" and r.since and now - _time(r.since) > UNSCHEDULABLE_GRACE:
                return (f"pod {r.pod} ({r.label}) cannot be scheduled: {r.message}; lower the role's resources "
                        "(roles.<role>.resources), fix its node_selector/tolerations, or add nodes")
        return None


def from_tfjob(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobState:
    conditions = [_condition(c, f"TFJob/{job['metadata']['name']}") for c in (job.get("status") or {}).get("conditions") or []]
    true = [c["type"] for c in conditions if c["status"] == "True"]
    phase = next((t for t in ("Succeeded", "Failed", "Restarting", "Running") if t in true), "Pending")
    expected = {spec_type.lower(): int(spec.get("replicas", 1))
                for spec_type, spec in (job["spec"].get("tfReplicaSpecs") or {}).items()}
    return _state(job, "tfjob", phase, conditions, expected, pods)


def from_jobs(name: str, jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> JobState:
    """A native job: one batch/v1 Job per task, labelled with its role."""
    conditions = [_condition(c, f"Job/{j['metadata']['name']}") for j in jobs
                  for c in (j.get("status") or {}).get("conditions") or []]
    chief = [j for j in jobs if _labels(j).get("app.kubernetes.io/component") == "chief"]
    if chief and _has(chief[0], "Complete"):
        phase = "Succeeded"
    elif any(_has(j, "Failed") for j in jobs):
        phase = "Failed"
    elif any((j.get("status") or {}).get("ready") for j in jobs) or \
            any((p.get("status") or {}).get("phase") == "Running" for p in pods):
        phase = "Running"
    else:
        phase = "Pending"
    expected: dict[str, int] = {}
    for j in jobs:
        role = _labels(j).get("app.kubernetes.io/component", "?")
        expected[role] = expected.get(role, 0) + 1
    oldest = min(jobs, key=lambda j: j["metadata"].get("creationTimestamp", ""))
    return _state({**oldest, "metadata": {**oldest["metadata"], "name": name}}, "native", phase, conditions,
                  expected, pods)


def _state(owner: dict[str, Any], mode: str, phase: str, conditions: list[dict[str, str]],
           expected: dict[str, int], pods: list[dict[str, Any]]) -> JobState:
    meta = owner["metadata"]
    by_task: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for pod in pods:
        by_task.setdefault(_task(pod), []).append(pod)
    tasks = sorted({(role, i) for role, count in expected.items() for i in range(count)} | set(by_task),
                   key=lambda t: (ROLES.index(t[0]) if t[0] in ROLES else len(ROLES), t[1]))
    return JobState(meta["name"], meta.get("namespace", ""), mode, phase, meta.get("creationTimestamp", ""),
                    conditions, [_replica(role, i, by_task.get((role, i), [])) for role, i in tasks])


def _replica(role: str, index: int, pods: list[dict[str, Any]]) -> Replica:
    """One task from its pods: a native Job makes a new pod per retry, TFJob restarts in place."""
    replica = Replica(role, index)
    if not pods:
        return replica
    pods = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))
    newest = pods[-1]
    status = newest.get("status") or {}
    replica.pod = newest["metadata"]["name"]
    replica.phase = status.get("phase", "Pending")
    replica.restarts = len(pods) - 1 + sum(_container(p).get("restartCount", 0) for p in pods)
    container = _container(newest)
    ended = (container.get("state") or {}).get("terminated") or (container.get("lastState") or {}).get("terminated")
    replica.exit_code = ended.get("exitCode") if ended else None
    waiting = (container.get("state") or {}).get("waiting")
    scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
    if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
        replica.reason, replica.message = waiting["reason"], waiting.get("message", "")
    elif scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        replica.reason, replica.message = "Unschedulable", scheduled.get("message", "")
        replica.since = scheduled.get("lastTransitionTime", "")
    return replica


def _task(pod: dict[str, Any]) -> tuple[str, int]:
    labels = _labels(pod)
    index = next((labels[k] for k in INDEX_LABELS if k in labels), "0")
    return labels.get(ROLE_LABEL, "?"), int(index)


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((c for c in statuses if c.get("name") == CONTAINER), {})


def _condition(c: dict[str, Any], source: str) -> dict[str, str]:
    return {"object": source, "type": c.get("type", ""), "status": c.get("status", ""),
            "reason": c.get("reason", ""), "message": c.get("message", "")}


def _has(job: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _time(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def age(stamp: str, now: datetime.datetime) -> str:
    """kubectl's way: 45s, 12m, 3h, 2d."""
    if not stamp:
        return "?"
    seconds = int((now - _time(stamp)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"
