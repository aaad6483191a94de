"""What a job on Kubernetes is doing, read from the objects the API server serves.

Pure functions over the JSON of a TFJob (or of a native job's Jobs), of its pods and of its
events, so that `status`, `wait` and `list` agree on one reading. Success means the chief
completed, in both modes: the TFJob's Succeeded condition (the operator sets it when the chief
ends with 0), or the native chief Job's Complete condition.

`policy.backoff_limit` is counted here too, over every task: the operator never counts an
ExitCode replica's retries (see `exceeded`), and a native job's limit is per task Job.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any

from deploy.spec import ROLES
from pml_trainer import exits

JOB_LABEL = "parallel-ml/job"
# Why pmlctl failed a job, on the TFJob or the task Jobs: once it suspends them their pods and the
# restarts they showed are gone, and the verdict must outlive them.
FAILED_ANNOTATION = "parallel-ml/failed"
SUBMISSION_LABEL = "parallel-ml/submission"
EXPERIMENT_LABEL = "parallel-ml/experiment"
ROLE_LABEL = "parallel-ml/role"
INDEX_LABELS = ("parallel-ml/index", "training.kubeflow.org/replica-index")  # native, TFJob
CONTAINER = "tensorflow"
PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")
# Waiting reasons the kubelet retries without end, each the same way until someone fixes the pod
# (kubernetes pkg/kubelet/images/types.go, pkg/kubelet/container/sync_result.go): the fix to name.
STUCK = {
    "ErrImageNeverPull": "the image is not on the node and imagePullPolicy is Never; load it into the nodes "
    "(`kind load docker-image IMAGE --name pml`) or set image_pull_policy: IfNotPresent",
    "CreateContainerConfigError": "create the Secret or key it names (credentials.secret, credentials.env) in the "
    "job's namespace, or fix the job's env",
    "CreateContainerError": "fix the container's configuration it names (image, command, mounts), then resubmit",
    "RunContainerError": "the runtime cannot start the image's entrypoint; check the image with "
    "`docker run IMAGE --help`, then resubmit",
}
# The Training Operator's event for every failed `tensorflow` container, the only trace of an
# ExitCode retry: the pod is deleted and made again under the same name (kubeflow/trainer v1.9.4,
# pkg/controller.v1/common/pod.go, ReconcilePods).
# client-go's recorder prefixes what it aggregates (tools/record/events_cache.go, EventAggregator).
EXITED = re.compile(
    r"^(?:\(combined from similar events\): )?"
    r"Pod: (?P<namespace>[^.]+)\.(?P<pod>\S+) exited with code (?P<code>-?\d+)$"
)
# The trainer's exit code after SIGTERM (trainer/exits.py, PREEMPTED). A SIGTERM comes from a pod's
# deletion or the kubelet ending it (a node that shuts down, memory pressure, a drain): never from
# a crash, so it is a preemption, not a restart that counts (issue 26, item 2). An OOM kill (137)
# and every other code of 128 and above count.
PREEMPTED = exits.PREEMPTED
# The kubelet retries a failed pull, backing off from 10 s to 5 min (pkg/kubelet/images/image_manager.go,
# EnsureImageExists: backOff.Next after a failure, ImagePullBackOff while it lasts; pkg/kubelet/kubelet.go,
# flowcontrol.NewBackOff(backOffPeriod, MaxContainerBackOff)). A pull refused now may succeed minutes later:
# on a new GKE cluster the node account's Artifact Registry grant takes minutes to apply. A name that
# cannot be parsed never will (InvalidImageName).
IMAGE_PULL_GRACE = datetime.timedelta(minutes=10)
# A cluster autoscaler needs a few minutes to add a node; after that, Unschedulable is for good.
UNSCHEDULABLE_GRACE = datetime.timedelta(minutes=5)


@dataclass
class Replica:
    role: str
    index: int
    pod: str = ""
    phase: str = "NoPod"
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    since: str = ""  # when the reason began (Unschedulable)
    in_place: int = 0  # container restarts by the kubelet, part of `restarts`
    preemptions: int = 0  # ends that were not the task's fault; not part of `restarts`

    @property
    def label(self) -> str:
        return f"{self.role}-{self.index}"


@dataclass
class JobState:
    name: str
    namespace: str
    mode: str
    phase: str  # Pending, Running, Restarting, Suspended, Succeeded or Failed
    created: str
    conditions: list[dict[str, str]] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    submission: str = ""
    experiment: str = ""  # the sweep or comparison it is a run of
    backoff_limit: int | None = None
    failed_by_pmlctl: str = ""  # the reason, from FAILED_ANNOTATION

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def restarts(self) -> int:
        return sum(r.restarts for r in self.replicas)

    @property
    def preemptions(self) -> int:
        return sum(r.preemptions for r in self.replicas)

    def exceeded(self) -> bool:
        """The operator's rule over every task's restarts (kubeflow/trainer v1.9.4, pkg/core/job.go,
        PastBackoffLimit): more than 0 for a limit of 0, else at least the limit."""
        if self.backoff_limit is None:
            return False
        return self.restarts > 0 if self.backoff_limit == 0 else self.restarts >= self.backoff_limit

    def problem(self, now: datetime.datetime) -> str | None:
        """Why the job cannot go on although it has not failed, as one line with the fix."""
        for r in self.replicas:
            if r.reason in STUCK:
                return f"pod {r.pod} ({r.label}) cannot start: {r.reason}: {r.message}; {STUCK[r.reason]}"
            if r.reason in PULL_ERRORS and _pulling_in_grace(r, now):
                continue
            if r.reason in PULL_ERRORS:
                return (
                    f"pod {r.pod} ({r.label}) cannot pull its image: {r.reason}: {r.message}; on kind load it with "
                    "`kind load docker-image IMAGE --name pml` (`pmlctl cluster up` does), elsewhere push it to a "
                    "registry the nodes can reach and pass --image"
                )
            if r.reason == "Unschedulable" and r.since and now - _time(r.since) > UNSCHEDULABLE_GRACE:
                return (
                    f"pod {r.pod} ({r.label}) cannot be scheduled: {r.message}; lower the role's resources "
                    "(roles.<role>.resources), fix its node_selector/tolerations, or add nodes"
                )
        return None


def from_tfjob(job: dict[str, Any], pods: list[dict[str, Any]], events: list[dict[str, Any]] = ()) -> JobState:
    """A TFJob with its pods and the events about it (the operator's record of ExitCode retries)."""
    conditions = [
        _condition(c, f"TFJob/{job['metadata']['name']}") for c in (job.get("status") or {}).get("conditions") or []
    ]
    true = [c["type"] for c in conditions if c["status"] == "True"]
    phase = next((t for t in ("Succeeded", "Failed", "Suspended", "Restarting", "Running") if t in true), "Pending")
    specs = job["spec"].get("tfReplicaSpecs") or {}
    expected = {spec_type.lower(): int(spec.get("replicas", 1)) for spec_type, spec in specs.items()}
    state = _state(job, "tfjob", phase, conditions, expected, pods)
    state.backoff_limit = (job["spec"].get("runPolicy") or {}).get("backoffLimit")
    retried = {t.lower() for t, spec in specs.items() if spec.get("restartPolicy") == "ExitCode"}
    for replica in state.replicas:
        exits = _exits(events, job["metadata"].get("uid"), f"{state.name}-{replica.role}-{replica.index}")
        if replica.role in retried:
            replica.restarts += sum(count for code, count in exits if code >= 128 and code != PREEMPTED)
        # Under OnFailure too (the ps): the operator makes a preempted pod again.
        replica.preemptions += sum(count for code, count in exits if code == PREEMPTED)
        if replica.exit_code is None and exits:
            replica.exit_code = exits[-1][0]
    return _judged(state)


def _exits(events: list[dict[str, Any]], uid: str | None, pod: str) -> list[tuple[int, int]]:
    """(exit code, times) of one pod's ExitedWithCode events about the TFJob `uid`, oldest first.
    The event recorder folds repeats of one message into `count`."""
    found = []
    for event in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or ""):
        match = EXITED.match(event.get("message", ""))
        if (
            event.get("reason") == "ExitedWithCode"
            and match
            and match["pod"] == pod
            and (event.get("involvedObject") or {}).get("uid") == uid
        ):
            found.append((int(match["code"]), int(event.get("count") or 1)))
    return found


def _judged(state: JobState) -> JobState:
    """A running job past its backoff limit has failed, whether or not the cluster says so."""
    if state.phase == "Succeeded":
        return state
    if state.failed_by_pmlctl:
        reason, _, message = state.failed_by_pmlctl.partition(" ")
    elif not state.finished and state.exceeded():
        reason, message = (
            "BackoffLimitExceeded",
            (f"{state.restarts} restarts reached policy.backoff_limit {state.backoff_limit}"),
        )
    else:
        return state
    state.phase = "Failed"
    state.conditions.append(
        {"object": "pmlctl", "type": "Failed", "status": "True", "reason": reason, "message": message}
    )
    return state


def from_jobs(name: str, jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> JobState:
    """A native job: one batch/v1 Job per task, labelled with its role."""
    conditions = [
        _condition(c, f"Job/{j['metadata']['name']}")
        for j in jobs
        for c in (j.get("status") or {}).get("conditions") or []
    ]
    chief = [j for j in jobs if _labels(j).get("app.kubernetes.io/component") == "chief"]
    if chief and _has(chief[0], "Complete"):
        phase = "Succeeded"
    elif any(_has(j, "Failed") for j in jobs):
        phase = "Failed"
    elif chief and chief[0]["spec"].get("suspend"):
        phase = "Suspended"
    elif any((j.get("status") or {}).get("ready") for j in jobs) or any(
        (p.get("status") or {}).get("phase") == "Running" for p in pods
    ):
        phase = "Running"
    else:
        phase = "Pending"
    expected: dict[str, int] = {}
    for j in jobs:
        role = _labels(j).get("app.kubernetes.io/component", "?")
        expected[role] = expected.get(role, 0) + 1
    oldest = min(jobs, key=lambda j: j["metadata"].get("creationTimestamp", ""))
    state = _state(
        {**oldest, "metadata": {**oldest["metadata"], "name": name}}, "native", phase, conditions, expected, pods
    )
    state.backoff_limit = oldest["spec"].get("backoffLimit")
    # The Job controller counts a retry in status.failed, also after the failed pod is gone.
    failed = {j["metadata"]["name"]: int((j.get("status") or {}).get("failed") or 0) for j in jobs}
    policies = {j["metadata"]["name"]: (j["spec"].get("podFailurePolicy") or {}).get("rules") or [] for j in jobs}
    for replica in state.replicas:
        job_name = f"{name}-{replica.role}-{replica.index}"
        # The pods the Job controller counted: failed ones its podFailurePolicy does not ignore (a
        # preemption; a task that lost a peer). status.failed leaves the others out too
        # (job_controller.go, trackJobStatusAndRemoveFinalizers); pods of a Job may be gone, so the
        # larger count holds.
        older = sorted(
            (p for p in pods if _task(p) == (replica.role, replica.index)),
            key=lambda p: p["metadata"].get("creationTimestamp", ""),
        )[:-1]
        counted = sum(1 for p in older if not _ignored(policies.get(job_name, []), p))
        replica.restarts = max(counted, failed.get(job_name, 0)) + replica.in_place
    return _judged(state)


def _ignored(rules: list[dict[str, Any]], pod: dict[str, Any]) -> bool:
    """Does the first rule of a podFailurePolicy that matches this ended pod ignore it? (kubernetes
    pkg/controller/job/pod_failure_policy.go, matchPodFailurePolicy: onExitCodes looks at containers
    that ended with a code other than 0, onPodConditions at the pod's conditions.)"""
    status = pod.get("status") or {}
    codes = [
        ((c.get("state") or {}).get("terminated") or {}).get("exitCode")
        for c in status.get("containerStatuses") or []
        if c.get("name") == CONTAINER
    ]
    for rule in rules:
        on = rule.get("onExitCodes")
        matched = bool(on) and any(
            code and (code in on.get("values", [])) == (on.get("operator") == "In") for code in codes
        )
        matched = matched or any(
            c.get("type") == want.get("type") and c.get("status") == want.get("status", "True")
            for want in rule.get("onPodConditions") or []
            for c in status.get("conditions") or []
        )
        if matched:
            return rule.get("action") == "Ignore"
    return False


def _state(
    owner: dict[str, Any],
    mode: str,
    phase: str,
    conditions: list[dict[str, str]],
    expected: dict[str, int],
    pods: list[dict[str, Any]],
) -> JobState:
    meta = owner["metadata"]
    by_task: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for pod in pods:
        by_task.setdefault(_task(pod), []).append(pod)
    tasks = sorted(
        {(role, i) for role, count in expected.items() for i in range(count)} | set(by_task),
        key=lambda t: (ROLES.index(t[0]) if t[0] in ROLES else len(ROLES), t[1]),
    )
    return JobState(
        meta["name"],
        meta.get("namespace", ""),
        mode,
        phase,
        meta.get("creationTimestamp", ""),
        conditions,
        [_replica(role, i, by_task.get((role, i), [])) for role, i in tasks],
        submission=_labels(owner).get(SUBMISSION_LABEL, ""),
        experiment=_labels(owner).get(EXPERIMENT_LABEL, ""),
        failed_by_pmlctl=(meta.get("annotations") or {}).get(FAILED_ANNOTATION, ""),
    )


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
    replica.in_place = sum(_container(p).get("restartCount", 0) for p in pods)
    # An evicted or preempted pod is not a restart: the native Jobs' podFailurePolicy ignores it
    # (kubernetes pkg/controller/job/pod_failure_policy.go, DisruptionTarget).
    disrupted = sum(
        1
        for p in pods[:-1]
        if any(
            c.get("type") == "DisruptionTarget" and c.get("status") == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    )
    replica.restarts = len(pods) - 1 - disrupted + replica.in_place
    replica.preemptions = disrupted
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
    if replica.reason in PULL_ERRORS:  # tried since the kubelet took the pod on
        replica.since = status.get("startTime") or newest["metadata"].get("creationTimestamp") or ""
    return replica


def _pulling_in_grace(r: Replica, now: datetime.datetime) -> bool:
    """A pull the kubelet still retries, and that may yet succeed (IMAGE_PULL_GRACE)."""
    return r.reason != "InvalidImageName" and bool(r.since) and now - _time(r.since) <= IMAGE_PULL_GRACE


def _task(pod: dict[str, Any]) -> tuple[str, int]:
    labels = _labels(pod)
    index = next((labels[k] for k in INDEX_LABELS if k in labels), "0")
    return labels.get(ROLE_LABEL, "?"), int(index)


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((c for c in statuses if c.get("name") == CONTAINER), {})


def _condition(c: dict[str, Any], source: str) -> dict[str, str]:
    return {
        "object": source,
        "type": c.get("type", ""),
        "status": c.get("status", ""),
        "reason": c.get("reason", ""),
        "message": c.get("message", ""),
    }


def _has(job: dict[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True" for c in (job.get("status") or {}).get("conditions") or []
    )


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _time(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
