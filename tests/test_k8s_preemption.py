"""Issue 26: a job on a Spot node pool, on the fake (tests/k8s_fake.py). A TFJob-mode and a
native-mode job each lose a worker, the ps and the chief to preemption: the kubelet ends each pod
Failed with a DisruptionTarget condition (pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go)
and the exit code the task chose on SIGTERM, 143 (trainer/exits.py, PREEMPTED; tests/
test_preemption_exits.py holds the trainer to it). `status` then reports 3 preemptions and 0
counted restarts, and the job goes on; a worker that crashes past backoff_limit fails it.
"""

from __future__ import annotations

import json

import pytest
from test_k8s import pmlctl, submit
from test_k8s_rules import conditions, job_file, kube, pod_of  # noqa: F401 (kube: the fixture)

pytest.importorskip("kubernetes")

LOST = [("worker", 0), ("ps", 0), ("chief", 0)]


def start(kube, tmp_path, mode: str, **policy) -> object:
    kube.tfjob = mode == "tfjob"
    assert submit("-f", job_file(tmp_path, **policy)).exit_code == 0
    controller = kube.operator if mode == "tfjob" else kube.job_controller
    for name in list(kube.objects("pods")):
        controller.run(name)
    return controller


def running(kube, controller, role: str, index: int) -> str:
    """The task's current pod, run by the kubelet; its name."""
    pod = next(
        p
        for p in kube.objects("pods").values()
        if p["metadata"]["labels"].get("parallel-ml/role") == role
        and p["metadata"]["labels"].get(
            "training.kubeflow.org/replica-index", p["metadata"]["labels"].get("parallel-ml/index")
        )
        == str(index)
        and p["status"].get("phase") == "Pending"
    )
    controller.run(pod["metadata"]["name"])
    return pod["metadata"]["name"]


def status(kube) -> dict:
    return json.loads(pmlctl("status", "study", "-t", "k8s", "-o", "json").stdout)


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_three_preemptions_are_not_restarts_and_the_job_succeeds(kube, tmp_path, mode):
    controller = start(kube, tmp_path, mode, backoff_limit=1, restart_policy="ExitCode")
    for role, index in LOST:
        controller.preempt(pod_of(kube, role, index)["metadata"]["name"], 143)
        running(kube, controller, role, index)
    doc = status(kube)
    assert (doc["details"]["preemptions"], doc["details"]["restarts"]) == (3, 0), doc
    assert doc["phase"] != "Failed", doc  # before: 3 restarts, past backoff_limit 1
    assert "3 preemption(s), not counted; 0 restart(s) counted of policy.backoff_limit 1" in doc["notes"]
    for pod in [p for p in kube.objects("pods").values() if p["status"].get("phase") == "Running"]:
        if pod["metadata"]["labels"].get("parallel-ml/role") != "chief":
            controller.exit(pod["metadata"]["name"], 0)
    controller.exit(pod_of(kube, "chief")["metadata"]["name"], 0)
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_a_worker_crashing_past_backoff_limit_fails_the_job_preemptions_or_not(kube, tmp_path, mode):
    controller = start(kube, tmp_path, mode, backoff_limit=2, restart_policy="ExitCode")
    controller.preempt(pod_of(kube, "ps")["metadata"]["name"], 143)
    running(kube, controller, "ps", 0)
    worker = pod_of(kube, "worker", 1)["metadata"]["name"]
    controller.exit(worker, 137)  # an OOM kill counts
    # And so does an outage of storage (a lost peer, 175, is counted where the peer failed).
    controller.exit(running(kube, controller, "worker", 1), 176)
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 1, result.output
    assert "BackoffLimitExceeded 2 restarts reached policy.backoff_limit 2" in result.stderr


def test_a_task_that_exits_0_on_preemption_fails_a_tfjob(kube, tmp_path):
    """Why item 1 matters: the operator reads exit 0 of a Failed pod as not retryable
    (kubeflow/trainer v1.9.4, pkg/controller.v1/common/pod.go, ReconcilePods)."""
    controller = start(kube, tmp_path, "tfjob", backoff_limit=3, restart_policy="ExitCode")
    controller.preempt("study-worker-0", 0)
    assert conditions(kube).get("Failed") == "TFJobFailed"


def test_the_event_recorder_drops_past_its_burst_and_folds_similar_events(kube):
    """client-go tools/record/events_cache.go: 25 events per object, then one per 300 s; from
    the 10th distinct message of one reason on, one combined event keeping the last message."""
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": "j", "uid": "u", "namespace": "default"},
    }
    for i in range(30):
        kube.event("default", job, "Normal", "ExitedWithCode", f"Pod: default.j-worker-{i} exited with code 175")
    events = sorted(kube.objects("events").values(), key=lambda e: e["message"])
    combined = [e for e in events if e["message"].startswith("(combined from similar events): ")]
    assert len(events) == 10 and len(combined) == 1 and combined[0]["count"] == 25 - 9
    assert combined[0]["message"].endswith("j-worker-24 exited with code 175")
    assert kube.correlator.dropped == 5
    clock = kube.correlator.clock
    kube.correlator.clock = lambda: clock() + 300  # one token back
    # A message not seen before: which earlier ones the aggregation still holds is arbitrary
    # (PopAny on a set), so a repeat of one of them may or may not be combined.
    kube.event("default", job, "Normal", "ExitedWithCode", "Pod: default.j-worker-30 exited with code 175")
    assert combined[0]["count"] == 30 - 9 + 1  # counted while dropped too (eventObserve)


def test_a_native_ps_preempted_past_backoff_limit_does_not_fail_its_job(kube, tmp_path):
    """Under OnFailure, the ps's Job could have no podFailurePolicy (kubernetes pkg/apis/batch/
    validation: only with restartPolicy Never), so the Job controller counted its preempted pods in
    status.failed against its backoffLimit (pkg/controller/job/job_controller.go, syncJob:
    exceedsBackoffLimit). It runs under Never now, with the workers' Ignore rule."""
    controller = start(kube, tmp_path, "native", backoff_limit=1, restart_policy="ExitCode")
    controller.preempt(pod_of(kube, "ps", 0)["metadata"]["name"], 143)
    controller.preempt(running(kube, controller, "ps", 0), 143)
    assert not [
        c for c in kube.objects("jobs")["study-ps-0"]["status"].get("conditions") or [] if c["type"] == "Failed"
    ]
    doc = status(kube)
    assert doc["phase"] != "Failed", doc


def test_a_native_chief_that_lost_its_preempted_ps_is_not_a_counted_restart(kube, tmp_path):
    """Under parameter servers the chief exits 175 (PEER_LOST) once its ps is gone; the ps's own Job
    judges the cause (here a preemption, ignored), so the chief's Job ignores 175 (the pod tier,
    tests/docker/test_pod_specs.py, found it counted)."""
    controller = start(kube, tmp_path, "native", backoff_limit=0, restart_policy="ExitCode")
    controller.preempt(pod_of(kube, "ps", 0)["metadata"]["name"], 143)
    kube.job_controller.exit(pod_of(kube, "chief", 0)["metadata"]["name"], 175)
    running(kube, controller, "ps", 0)
    running(kube, controller, "chief", 0)
    doc = status(kube)
    assert (doc["details"]["preemptions"], doc["details"]["restarts"]) == (1, 0), doc
    assert doc["phase"] != "Failed", doc  # before: the chief's 175 past backoff_limit 0
