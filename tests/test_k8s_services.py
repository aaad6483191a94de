"""The Training Operator's Services (issue 26, "The fake must know these rules"): for a TFJob the
operator, not the chart, makes a headless Service per task, and deletes it with its pod
(kubeflow/trainer v1.9.4 pkg/controller.v1/common/service.go and job.go; the fake's rules in
tests/k8s_fake.py cite each function). What pmlctl does with a TFJob must hold with them there.
"""

from __future__ import annotations

import json
import threading

import pytest
from k8s_fake import selector_matches
from test_k8s import pmlctl, submit
from test_k8s_rules import conditions, job_file, kube, run_all  # noqa: F401 (kube: the fixture)

pytest.importorskip("kubernetes")

TASKS = ["study-chief-0", "study-ps-0", "study-worker-0", "study-worker-1"]


def selector(svc: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items())


def selected(kube, svc: dict) -> list[str]:
    return sorted(
        n for n, p in kube.objects("pods").items() if selector_matches(selector(svc), p["metadata"]["labels"])
    )


def ports(svc: dict) -> dict[str, int]:
    return {p["name"]: p["port"] for p in svc["spec"]["ports"]}


def services(kube) -> list[str]:
    return sorted(kube.objects("services"))


def running(kube) -> list[str]:
    """Pods that run or may run: neither ended nor being deleted."""
    return sorted(
        n
        for n, p in kube.objects("pods").items()
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") in ("Running", "Pending")
    )


def test_the_operator_makes_a_headless_service_per_task_that_selects_its_pod(kube):
    assert submit().exit_code == 0
    tfjob = kube.objects("tfjobs")["study"]
    assert services(kube) == TASKS
    for name, svc in kube.objects("services").items():
        rtype, index = name.split("-")[1:]
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["selector"] == {
            "training.kubeflow.org/operator-name": "tfjob-controller",
            "training.kubeflow.org/job-name": "study",
            "training.kubeflow.org/replica-type": rtype,
            "training.kubeflow.org/replica-index": index,
        }
        assert svc["metadata"]["labels"] == svc["spec"]["selector"]
        assert selected(kube, svc) == [name]  # exactly its task's pod
        assert ports(svc) == ({"tfjob-port": 2222, "control": 2223} if rtype == "chief" else {"tfjob-port": 2222})
        assert all(p["targetPort"] == p["port"] and p["protocol"] == "TCP" for p in svc["spec"]["ports"])
        assert svc["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "kubeflow.org/v1",
                "kind": "TFJob",
                "name": "study",
                "uid": tfjob["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    made = sorted(e["message"] for e in kube.objects("events").values() if e["reason"] == "SuccessfulCreateService")
    assert made == [f"Created service: {n}" for n in TASKS]


def test_the_network_policy_admits_every_peer_on_every_service_port(kube):
    """Headless: a task's name resolves to its pod's address, so the NetworkPolicy (on pods) decides."""
    assert submit().exit_code == 0
    (policy,) = kube.objects("networkpolicies").values()
    (rule,) = policy["spec"]["ingress"]
    (peers,) = rule["from"]
    allowed = {(p["protocol"], p["port"]) for p in rule["ports"]}

    def matches(label_selector: dict, pod: str) -> bool:
        labels = kube.objects("pods")[pod]["metadata"]["labels"]
        return all(labels.get(k) == v for k, v in label_selector["matchLabels"].items())

    for svc in kube.objects("services").values():
        (pod,) = selected(kube, svc)
        assert matches(policy["spec"]["podSelector"], pod)  # the policy guards it
        assert all(matches(peers["podSelector"], other) for other in TASKS)  # every peer may reach it
        assert {(p["protocol"], p["targetPort"]) for p in svc["spec"]["ports"]} <= allowed


def test_status_and_list_read_a_tfjob_with_its_services_as_before(kube):
    assert submit().exit_code == 0
    run_all(kube)
    doc = json.loads(pmlctl("status", "study", "-t", "k8s", "-o", "json").stdout)
    assert doc["phase"] == "Running"
    assert sorted(r["where"] for r in doc["tasks"]) == TASKS
    rows = pmlctl("list", "-t", "k8s").stdout.splitlines()[1:]
    assert [r.split()[:3] for r in rows] == [["study", "tfjob", "Running"]]


def test_a_task_restarted_by_the_operator_keeps_its_service(kube):
    assert submit().exit_code == 0
    run_all(kube)
    before = kube.objects("services")["study-worker-0"]["metadata"]["uid"]
    kube.operator.exit("study-worker-0", 137)  # retryable under ExitCode: the pod is made again
    assert kube.objects("pods")["study-worker-0"]["status"]["phase"] == "Pending"
    svc = kube.objects("services")["study-worker-0"]
    assert svc["metadata"]["uid"] == before and selected(kube, svc) == ["study-worker-0"]


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        ("Running", ["study-chief-0"]),  # the chief Succeeded: its pod and Service stay
        ("All", []),
        ("None", TASKS),
    ],
)
def test_a_succeeded_tfjob_deletes_the_services_of_the_pods_its_clean_pod_policy_deletes(kube, tmp_path, policy, kept):
    assert submit("-f", job_file(tmp_path, clean_pod_policy=policy)).exit_code == 0
    run_all(kube)
    kube.operator.exit("study-chief-0", 0)
    assert "Succeeded" in conditions(kube)
    assert services(kube) == kept
    deleted = {n for n, p in kube.objects("pods").items() if p["metadata"].get("deletionTimestamp")}
    assert deleted == set(TASKS) - set(kept) - {"study-chief-0"}  # a Succeeded pod goes at once
    # Later reconciles of the finished job change nothing, and the TTL takes the rest.
    kube.settle()
    assert services(kube) == kept
    kube.operator.expire("study")
    assert services(kube) == []


@pytest.mark.parametrize(
    ("restart_policy", "code"),
    [
        ("ExitCode", 1),  # not retryable: ReconcilePods leaves it, UpdateJobStatus fails the job
        ("Never", 137),
    ],
)
def test_a_tfjob_failed_by_the_operator_stops_its_other_tasks(kube, tmp_path, restart_policy, code):
    """cleanPodPolicy Running (the chart's): the operator deletes the Running and Pending pods of a
    Failed TFJob and their Services (common/job.go, ReconcileJobs then DeletePodsAndServices)."""
    assert submit("-f", job_file(tmp_path, restart_policy=restart_policy)).exit_code == 0
    run_all(kube)
    kube.operator.exit("study-worker-1", code)
    assert conditions(kube).get("Failed") == "TFJobFailed"
    assert running(kube) == []
    assert kube.terminating() == ["study-chief-0", "study-ps-0", "study-worker-0"]
    assert services(kube) == ["study-worker-1"]  # the failed pod is kept for a look, with its Service
    for name in kube.terminating():
        kube.finish_termination(name)
    assert sorted(kube.objects("pods")) == ["study-worker-1"] and running(kube) == []
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 1 and "TFJobFailed" in result.stderr


def test_a_tfjob_past_its_backoff_limit_stops_its_other_tasks(kube, tmp_path):
    assert submit("-f", job_file(tmp_path, backoff_limit=1, restart_policy="OnFailure")).exit_code == 0
    run_all(kube)
    kube.operator.exit("study-worker-0", 1)  # restarted in place; the restart reaches the limit
    assert conditions(kube).get("Failed") == "TFJobFailed"
    assert running(kube) == [] and services(kube) == []


def test_a_stopped_tfjob_loses_its_services_and_is_told_so(kube, tmp_path):
    """pmlctl stops a job it failed by suspending it; the operator then deletes every pod and its
    Service, cleanPodPolicy or not (common/job.go, ReconcileJobs: IsJobSuspended)."""
    assert submit("-f", job_file(tmp_path, backoff_limit=1)).exit_code == 0
    run_all(kube)
    kube.operator.exit("study-chief-0", 137)
    kube.operator.run("study-chief-0")
    kube.operator.exit("study-chief-0", 137)
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 1 and "BackoffLimitExceeded" in result.stderr, result.output
    assert "Suspended" in conditions(kube)
    assert services(kube) == [] and running(kube) == []
    assert "its TFJob, NetworkPolicy and ServiceAccount keep the name" in result.stderr
    # Resumed (as Kueue would), the operator makes the pods and their Services again.
    kube.objects("tfjobs")["study"]["spec"]["runPolicy"]["suspend"] = False
    for name in kube.terminating():
        kube.finish_termination(name)
    assert services(kube) == TASKS


def test_delete_returns_only_once_the_garbage_collector_took_the_services(kube):
    """The operator's Services carry its labels, not the chart's, so `pmlctl delete` does not list
    them; they go with the TFJob when the garbage collector acts. Its Foreground delete keeps the
    TFJob, marked, until every dependent with blockOwnerDeletion is gone, the operator's Services
    among them (job_controller.go, GenOwnerReference), so waiting for the TFJob waits for them."""
    assert submit().exit_code == 0
    run_all(kube)
    kube.gc_held = True
    done = {}
    thread = threading.Thread(target=lambda: done.update(result=pmlctl("delete", "study", "-t", "k8s")))
    thread.start()
    dying = kube.wait_for(lambda: len(kube.terminating()) == 4 and kube.terminating())
    for name in dying:
        kube.finish_termination(name)
    polls = len(kube.calls("GET", "/apis/kubeflow.org/v1/namespaces/default/tfjobs"))
    kube.wait_for(lambda: len(kube.calls("GET", "/apis/kubeflow.org/v1/namespaces/default/tfjobs")) > polls + 2)
    assert thread.is_alive() and "study" in kube.objects("tfjobs") and services(kube) == TASKS
    kube.gc_held = False
    kube.settle()
    thread.join(30)
    assert done["result"].exit_code == 0, done["result"].output
    assert {plural for (_, plural), items in kube.store.items() if items} <= {"events"}
    assert submit().exit_code == 0  # the name is free: the new TFJob gets Services of its own
    uid = kube.objects("tfjobs")["study"]["metadata"]["uid"]
    assert services(kube) == TASKS
    assert all(s["metadata"]["ownerReferences"][0]["uid"] == uid for s in kube.objects("services").values())
    assert not [e for e in kube.objects("events").values() if e["reason"] == "FailedCreateService"]


def test_delete_leaves_the_services_of_another_tfjob_of_that_name_alone(kube):
    """A TFJob of the name that pmlctl did not make (no parallel-ml/job label) is not ours to clean."""
    template = {"spec": {"containers": [{"name": "tensorflow", "image": "other"}]}}
    kube.put("tfjobs", {"metadata": {"name": "study"}, "spec": {"tfReplicaSpecs": {"Worker": {"template": template}}}})
    kube.settle()
    assert services(kube) == ["study-worker-0"]
    assert pmlctl("delete", "study", "-t", "k8s").exit_code == 0
    assert services(kube) == ["study-worker-0"] and "study" in kube.objects("tfjobs")
