"""Kubernetes on its bad days (issue 26): a native job whose chief Job the Job controller failed,
Kueue undoing a stop, a TTL of 0, and what a stopped job leaves. The fake's rules each cite the
source they follow (tests/k8s_fake.py)."""

from __future__ import annotations

import json

import pytest
import yaml
from test_k8s import CRD_FILE, pmlctl, submit

pytest.importorskip("kubernetes")


@pytest.fixture
def kube(tmp_path, monkeypatch):
    from k8s_fake import FakeKube

    from deploy.k8s import target

    fake = FakeKube(yaml.safe_load(CRD_FILE.read_text()))
    fake.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("PML_HOME", str(tmp_path / "pml-home"))
    monkeypatch.setattr(target, "POLL_SECONDS", 0.01)  # how often wait polls, not a synchronisation
    fake.operator.enabled = fake.job_controller.enabled = True
    yield fake
    fake.close()


def job_file(tmp_path, **sections) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def pod_of(kube, role: str, index: int = 0) -> str:
    return next(
        name
        for name, p in kube.objects("pods").items()
        if p["metadata"]["labels"].get("parallel-ml/role") == role
        and p["metadata"]["labels"].get(
            "training.kubeflow.org/replica-index", p["metadata"]["labels"].get("parallel-ml/index")
        )
        == str(index)
        and not p["metadata"].get("deletionTimestamp")
    )


def run_all(kube, mode: str) -> None:
    controller = kube.operator if mode == "tfjob" else kube.job_controller
    for name, pod in list(kube.objects("pods").items()):
        if pod["status"].get("phase") == "Pending":
            controller.run(name)


def failed(kube, job: str) -> dict[str, str]:
    return {
        c["reason"]: c["message"]
        for c in kube.objects("jobs")[job]["status"].get("conditions") or []
        if c["type"] == "Failed" and c["status"] == "True"
    }


def alive(kube) -> list[str]:
    """Pods that run or may run: neither ended nor being deleted."""
    return sorted(
        n
        for n, p in kube.objects("pods").items()
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") not in ("Succeeded", "Failed")
    )


# The Job controller's rules in the fake.


def test_a_native_exit_1_fails_its_job_at_once_by_the_pod_failure_policy(kube):
    kube.tfjob = False
    assert submit().exit_code == 0
    run_all(kube, "native")
    worker = pod_of(kube, "worker", 0)
    kube.job_controller.exit(worker, 1)
    reasons = failed(kube, "study-worker-0")
    assert list(reasons) == ["PodFailurePolicy"]  # before: counted and retried with a new pod
    assert reasons["PodFailurePolicy"] == (
        f"Container tensorflow for pod default/{worker} failed with exit code 1 matching FailJob rule at index 2"
    )
    pods = [p for p in kube.objects("pods").values() if p["metadata"]["labels"].get("parallel-ml/role") == "worker"]
    assert len(pods) == 2  # no new pod for worker 0


def running_ps(kube) -> str:
    return next(
        n
        for n, p in kube.objects("pods").items()
        if p["status"].get("phase") == "Running" and p["metadata"]["labels"].get("parallel-ml/role") == "ps"
    )


def test_a_native_ps_crashing_past_the_limit_fails_its_job(kube, tmp_path):
    kube.tfjob = False
    assert submit("-f", job_file(tmp_path, policy={"backoff_limit": 2})).exit_code == 0
    run_all(kube, "native")
    crashed = []
    for _ in range(3):  # a new pod after each crash (137: the OOM killer), the third past backoff_limit 2
        assert failed(kube, "study-ps-0") == {}
        crashed.append(running_ps(kube))
        kube.job_controller.exit(crashed[-1], 137)
        run_all(kube, "native")
    assert failed(kube, "study-ps-0") == {"BackoffLimitExceeded": "Job has reached the specified backoff limit"}
    assert len(set(crashed)) == 3


def test_a_native_ps_whose_chief_failed_for_good_fails_its_job_at_once(kube, tmp_path):
    """Exit 4: a new ps would wait for a chief that never comes (second reading of issue 26)."""
    kube.tfjob = False
    assert submit("-f", job_file(tmp_path, policy={"backoff_limit": 6})).exit_code == 0
    run_all(kube, "native")
    kube.job_controller.exit(running_ps(kube), 4)
    assert list(failed(kube, "study-ps-0")) == ["PodFailurePolicy"]
    ps_pods = [p for p in kube.objects("pods").values() if p["metadata"]["labels"].get("parallel-ml/role") == "ps"]
    assert len(ps_pods) == 1  # no second pod


# 4. A job the Job controller failed stops its other tasks.


def test_a_native_job_whose_chief_job_failed_stops_every_other_task(kube):
    kube.tfjob = False
    assert submit().exit_code == 0
    run_all(kube, "native")
    kube.job_controller.exit(pod_of(kube, "chief"), 1)
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 1, result.output
    assert "job study failed: Job/study-chief-0: PodFailurePolicy Container tensorflow" in result.stderr
    # Before: the ps and the workers ran on, the ps waiting for a chief that would never come.
    assert all(job["spec"].get("suspend") for job in kube.objects("jobs").values())
    assert alive(kube) == []
    # 7. What stays, and how it goes.
    assert (
        "job study is stopped, not deleted: a TTL collects only finished jobs" in result.stderr
        and "`pmlctl delete study -t k8s` removes them" in result.stderr
    )
    again = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert again.exit_code == 1 and "PodFailurePolicy" in again.stderr and "is stopped" not in again.stderr


# 5. Kueue keeps a stopped job stopped only when its Workload is inactive.


def test_the_fakes_kueue_unsuspends_an_admitted_job(kube, tmp_path):
    kube.tfjob = False
    kube.kueue.enabled = True
    assert submit("-f", job_file(tmp_path, scheduling={"queue": "team-a"})).exit_code == 0
    assert not any(job["spec"]["suspend"] for job in kube.objects("jobs").values())  # admitted at once
    workloads = kube.objects("workloads")
    assert sorted(w["metadata"]["ownerReferences"][0]["name"] for w in workloads.values()) == sorted(
        kube.objects("jobs")
    )
    kube.objects("jobs")["study-ps-0"]["spec"]["suspend"] = True
    kube.settle()
    assert kube.objects("jobs")["study-ps-0"]["spec"]["suspend"] is False


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_a_job_pmlctl_failed_stays_stopped_under_kueue(kube, tmp_path, mode):
    kube.tfjob = mode == "tfjob"
    kube.kueue.enabled = True
    spec = job_file(tmp_path, scheduling={"queue": "team-a"}, policy={"backoff_limit": 1})
    assert submit("-f", spec).exit_code == 0
    run_all(kube, mode)
    if mode == "tfjob":
        kube.operator.exit("study-chief-0", 137)  # an OOM kill: retried, and past pmlctl's limit of 1
    else:
        kube.job_controller.exit(pod_of(kube, "worker", 1), 1)  # the Job controller fails its Job
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 1, result.output
    assert all(w["spec"]["active"] is False for w in kube.objects("workloads").values())
    for name in kube.terminating():
        kube.finish_termination(name)
    kube.settle()  # Kueue and the controllers catch up: before, Kueue unsuspended it and pods came back
    assert alive(kube) == []
    owners = kube.objects("tfjobs").values() if mode == "tfjob" else kube.objects("jobs").values()
    assert all(
        (o["spec"]["runPolicy"]["suspend"] if mode == "tfjob" else o["spec"]["suspend"]) is True
        for o in owners
        if mode == "tfjob" or not failed(kube, o["metadata"]["name"])
    )
    assert "could not" not in result.stderr and "no Workload" not in result.stderr


def test_without_kueues_api_a_queued_job_is_stopped_and_the_user_told_how_to_keep_it_stopped(kube, tmp_path):
    kube.tfjob = False
    assert submit("-f", job_file(tmp_path, scheduling={"queue": "team-a"})).exit_code == 0
    kube.forbidden.add(("list", "workloads"))
    run_all(kube, "native")
    kube.job_controller.exit(pod_of(kube, "chief"), 1)
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 1
    assert "its Workloads could not be deactivated" in result.stderr
    assert "`pmlctl delete study -t k8s` stops it for good" in result.stderr


# 6. A TTL of 0: the job is deleted the moment it ends; wait reads its outcome from the model dir.


def submit_to(model_dir, *args: str):
    return pmlctl(
        "submit", "-t", "k8s", "--name", "study", "--workers", "1", "--ps", "1", "--model-dir", str(model_dir), *args
    )


def waiting(monkeypatch):
    """`pmlctl wait` in a thread, once it has read where the running job's result goes and what is
    there already."""
    import threading

    from deploy.k8s import target

    looked, outcome = threading.Event(), {}
    real = target._results

    def results(*args):
        found = real(*args)
        looked.set()
        return found

    monkeypatch.setattr(target, "_results", results)
    thread = threading.Thread(
        target=lambda: outcome.update(result=pmlctl("wait", "study", "-t", "k8s", "--timeout", "20"))
    )
    thread.start()
    assert looked.wait(20)
    return thread, outcome


def ttl_0_job(kube, tmp_path, mode: str = "tfjob"):
    """A running job with ttl_seconds_after_finished 0, and its (local) model dir."""
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    assert submit_to(model_dir, "-f", job_file(tmp_path, policy={"ttl_seconds_after_finished": 0})).exit_code == 0
    run_all(kube, mode)
    return model_dir


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_a_job_deleted_by_a_ttl_of_0_reports_success_from_its_result(kube, tmp_path, mode, monkeypatch):
    kube.tfjob = mode == "tfjob"
    model_dir = ttl_0_job(kube, tmp_path, mode)
    thread, outcome = waiting(monkeypatch)
    (model_dir / "result.json").write_text('{"steps": 100}')  # the chief publishes it last
    controller = kube.operator if mode == "tfjob" else kube.job_controller
    controller.exit(pod_of(kube, "chief"), 0)
    if mode == "native":  # the other tasks see the chief's end and leave with 0
        for role in ("worker", "ps"):
            controller.exit(pod_of(kube, role), 0)
    assert not kube.objects("tfjobs") and not kube.objects("jobs")  # the fake's TTL-at-0 rule
    thread.join(30)
    result = outcome["result"]
    assert result.exit_code == 0, result.output  # before: "error: job study not found"


def test_a_job_deleted_by_a_ttl_of_0_without_a_new_result_failed(kube, tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "result.json").write_text('{"steps": 50}')  # an earlier run's
    model_dir = ttl_0_job(kube, tmp_path)
    thread, outcome = waiting(monkeypatch)
    kube.operator.exit("study-chief-0", 1)  # ExitCode: permanent, the TFJob fails and is deleted
    assert not kube.objects("tfjobs")
    thread.join(30)
    result = outcome["result"]
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: job study was deleted (ttl_seconds_after_finished 0) before wait saw it end, and "
        f"{model_dir} has no new result.json, so it did not succeed; set policy.ttl_seconds_after_finished "
        "above 60 to keep its status and logs for a look"
    )


def test_a_result_published_before_wait_first_looked_is_still_this_jobs_success(kube, tmp_path, monkeypatch):
    """The chief publishes result.json, then waits up to FINAL_EVALUATION_SECONDS for the
    evaluator's last evaluation before it exits (trainer/train.py, _tell_the_end). A `wait` that
    first looks in that window must not take this job's own result.json for an earlier run's."""
    model_dir = ttl_0_job(kube, tmp_path)
    tfjob = next(iter(kube.objects("tfjobs").values()))
    submission = tfjob["metadata"]["labels"]["parallel-ml/submission"]
    chief = tfjob["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]
    assert {"name": "PML_SUBMISSION", "value": submission} in chief["env"]  # what the chief writes in result.json
    # published by this job's chief, which still waits for its evaluator
    (model_dir / "result.json").write_text(json.dumps({"steps": 100, "submission": submission}))
    thread, outcome = waiting(monkeypatch)
    kube.operator.exit("study-chief-0", 0)
    assert not kube.objects("tfjobs")
    thread.join(30)
    result = outcome["result"]
    assert result.exit_code == 0, result.output  # before: "… has no new result.json, so it did not succeed"


def test_an_earlier_submissions_result_is_not_this_jobs_success(kube, tmp_path, monkeypatch):
    model_dir = ttl_0_job(kube, tmp_path)
    thread, outcome = waiting(monkeypatch)
    (model_dir / "result.json").write_text(json.dumps({"steps": 100, "submission": "0ther"}))  # another job's
    kube.operator.exit("study-chief-0", 1)
    thread.join(30)
    assert outcome["result"].exit_code == 1
    assert "has no new result.json" in outcome["result"].stderr


def test_a_stop_under_kueue_never_lets_the_job_run_again_in_between(kube, tmp_path, monkeypatch):
    """A `suspend: true` before the Workload is inactive is undone by Kueue's reconciler in between
    ("7. handle job is suspended": startJob on an admitted Workload), and the operator makes every
    pod again (pkg/controller.v1/common/job.go: the job is resumed); a chief among them trains on.
    Deactivated first, the Workload is evicted and the job stays suspended throughout."""
    import k8s_fake

    kube.kueue.enabled = True
    spec = job_file(tmp_path, scheduling={"queue": "team-a"}, policy={"backoff_limit": 1})
    assert submit("-f", spec).exit_code == 0
    run_all(kube, "tfjob")
    kube.operator.exit("study-chief-0", 137)  # past pmlctl's limit of 1
    resumed = []
    real = k8s_fake._set_suspend

    def set_suspend(plural, doc, value):
        if not value:
            resumed.append(doc["metadata"]["name"])
        return real(plural, doc, value)

    monkeypatch.setattr(k8s_fake, "_set_suspend", set_suspend)
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 1, result.output
    assert resumed == []  # before: Kueue resumed the job between pmlctl's suspend and its deactivation


def test_a_queued_job_that_falls_back_to_native_mode_waits_hours_for_its_chief(kube, tmp_path):
    """The mode is decided at submit time (no operator: native); the wait follows it (second
    reading of issue 26: a validator on the job file saw the default mode, tfjob)."""
    kube.tfjob = False
    assert submit("-f", job_file(tmp_path, scheduling={"queue": "team-a"})).exit_code == 0
    for pod in kube.objects("pods").values():
        args = pod["spec"]["containers"][0]["args"]
        assert args[args.index("--chief-start-timeout") + 1] == "21600", pod["metadata"]["name"]
