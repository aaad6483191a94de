"""The Kubernetes target against the rules of a real cluster (issue 11), each a defect that the
first fake hid: the fake's controllers (tests/k8s_fake.py) now run the submitted objects the way
the Training Operator v1.9.4, the Job controller and the garbage collector do.
"""

from __future__ import annotations

import copy
import json
import threading

import pytest
import yaml
from test_k8s import CRD_FILE, error_line, pmlctl, posted, submit

from deploy import render
from deploy.k8s import api as kube_api
from deploy.spec import JobSpec

pytest.importorskip("kubernetes")


@pytest.fixture
def kube(request, tmp_path, monkeypatch):
    from k8s_fake import FakeKube

    from deploy.k8s import target

    fake = FakeKube(yaml.safe_load(CRD_FILE.read_text()))
    fake.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("PML_HOME", str(tmp_path / "pml-home"))
    monkeypatch.setattr(target, "POLL_SECONDS", 0.01)  # how often wait/logs poll, not a synchronisation
    fake.operator.enabled = fake.job_controller.enabled = True
    yield fake
    fake.close()


def job_file(tmp_path, **policy) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"policy": policy}))
    return str(path)


def run_all(kube) -> None:
    for name in list(kube.objects("pods")):
        kube.operator.run(name)


def pod_of(kube, role: str, index: int = 0) -> dict:
    return next(
        p
        for p in kube.objects("pods").values()
        if p["metadata"]["labels"].get("parallel-ml/role") == role
        and p["metadata"]["labels"].get(
            "training.kubeflow.org/replica-index", p["metadata"]["labels"].get("parallel-ml/index")
        )
        == str(index)
    )


def conditions(kube, name: str = "study") -> dict[str, str]:
    tfjob = kube.objects("tfjobs")[name]
    return {c["type"]: c["reason"] for c in tfjob["status"]["conditions"] if c["status"] == "True"}


# 1. A ps that ends with 0 is not restarted, so a successful job is not failed for its restarts.


def test_a_tfjob_ps_that_ends_with_0_stays_ended_and_the_job_succeeds(kube, tmp_path):
    assert submit("-f", job_file(tmp_path, backoff_limit=1)).exit_code == 0
    run_all(kube)
    kube.operator.exit("study-ps-0", 0)  # the chief said "done"
    ps = kube.objects("pods")["study-ps-0"]
    assert ps["status"]["phase"] == "Succeeded" and ps["status"]["containerStatuses"][0]["restartCount"] == 0
    for worker in ("study-worker-0", "study-worker-1", "study-chief-0"):
        kube.operator.exit(worker, 0)
    assert conditions(kube) == {"Created": "TFJobCreated", "Succeeded": "TFJobSucceeded"}
    assert pmlctl("wait", "study", "-t", "k8s", "--timeout", "5").exit_code == 0


def test_a_tfjob_ps_that_crashes_restarts_in_place(kube):
    assert submit().exit_code == 0
    run_all(kube)
    kube.operator.exit("study-ps-0", 1)
    ps = kube.objects("pods")["study-ps-0"]
    assert ps["status"]["phase"] == "Running" and ps["status"]["containerStatuses"][0]["restartCount"] == 1


# 2 and 15. ExitCode retries count toward backoff_limit, with their exit codes.


def test_exit_code_retries_reach_the_backoff_limit_and_wait_fails_the_job(kube, tmp_path):
    assert submit("-f", job_file(tmp_path, backoff_limit=2)).exit_code == 0
    run_all(kube)
    first_uid = kube.objects("pods")["study-chief-0"]["metadata"]["uid"]
    kube.operator.exit("study-chief-0", 137)  # an OOM kill: retryable, the operator makes the pod again
    chief = kube.objects("pods")["study-chief-0"]
    assert chief["metadata"]["uid"] != first_uid and chief["status"]["phase"] == "Pending"
    assert "Failed" not in conditions(kube)  # the operator never counts ExitCode retries

    doc = json.loads(pmlctl("status", "study", "-t", "k8s", "-o", "json").stdout)
    row = next(r for r in doc["tasks"] if r["role"] == "chief")
    assert (row["restarts"], row["exit_code"]) == (1, 137) and doc["phase"] == "Restarting"

    kube.operator.run("study-chief-0")
    kube.operator.exit("study-chief-0", 175)
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "error: job study failed: pmlctl: BackoffLimitExceeded 2 restarts reached policy.backoff_limit 2"
    )
    # Stopped, so that nothing restarts any more: the operator deletes a suspended job's pods.
    assert kube.objects("tfjobs")["study"]["spec"]["runPolicy"]["suspend"] is True
    assert "Suspended" in conditions(kube)
    assert all(p["metadata"].get("deletionTimestamp") for p in kube.objects("pods").values())


def test_native_restarts_of_all_tasks_count_toward_one_limit(kube, tmp_path):
    kube.tfjob = False
    assert submit("-f", job_file(tmp_path, backoff_limit=2, restart_policy="OnFailure")).exit_code == 0
    for name in list(kube.objects("pods")):
        kube.job_controller.run(name)
    worker0 = pod_of(kube, "worker", 0)["metadata"]["name"]
    worker1 = pod_of(kube, "worker", 1)["metadata"]["name"]
    kube.job_controller.exit(worker0, 1)
    kube.job_controller.exit(worker1, 1)  # each Job is under its own limit of 2; the job is not
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 1 and "BackoffLimitExceeded 2 restarts" in result.stderr
    assert all(job["spec"]["suspend"] for job in kube.objects("jobs").values())
    # Its pods, and the restarts they showed, are gone now; the verdict is not.
    for name in kube.terminating():
        kube.finish_termination(name)
    again = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert again.exit_code == 1 and "BackoffLimitExceeded 2 restarts" in again.stderr
    assert pmlctl("list", "-t", "k8s").stdout.splitlines()[1].split()[:3] == ["study", "native", "Failed"]


def test_a_suspended_tfjob_shows_as_suspended(kube):
    assert submit().exit_code == 0
    kube.objects("tfjobs")["study"]["spec"]["runPolicy"]["suspend"] = True
    kube.settle()
    assert pmlctl("status", "study", "-t", "k8s").stdout.startswith("job study: Suspended (tfjob")


# 4. --replace and delete wait for the pods; status never mixes two submissions.


def test_replace_waits_until_the_old_pods_are_gone(kube):
    kube.tfjob = False
    assert submit().exit_code == 0
    for name in list(kube.objects("pods")):
        kube.job_controller.run(name)
    old = {p["metadata"]["labels"]["parallel-ml/submission"] for p in kube.objects("pods").values()}
    posts = len(kube.calls("POST"))
    replaced = {}
    thread = threading.Thread(target=lambda: replaced.update(result=submit("--replace")))
    thread.start()
    dying = kube.wait_for(lambda: len(kube.terminating()) == 4 and kube.terminating())
    # The old pods are Terminating for their grace period: nothing new may start beside them.
    kube.wait_for(lambda: len(kube.calls("GET", "/api/v1/namespaces/default/pods")) > 3)
    assert len(kube.calls("POST")) == posts
    for name in dying:
        kube.finish_termination(name)
    thread.join(30)
    assert replaced["result"].exit_code == 0, replaced["result"].output
    assert len(kube.calls("POST")) == 2 * posts
    services = list(kube.objects("services").values())
    new = {s["spec"]["selector"]["parallel-ml/submission"] for s in services}
    assert len(new) == 1 and new.isdisjoint(old)  # a new Service never selects a dying pod


def test_status_reads_only_the_current_submissions_pods(kube):
    assert submit().exit_code == 0
    run_all(kube)
    kube.pod("study", "worker", 0, "tfjob", name="study-worker-0-old")
    kube.objects("pods")["study-worker-0-old"]["metadata"]["labels"]["parallel-ml/submission"] = "0ld0ld00"
    doc = json.loads(pmlctl("status", "study", "-t", "k8s", "-o", "json").stdout)
    assert {r["where"] for r in doc["tasks"]} == {"study-chief-0", "study-worker-0", "study-worker-1", "study-ps-0"}
    assert (
        doc["details"]["submission"] == kube.objects("tfjobs")["study"]["metadata"]["labels"]["parallel-ml/submission"]
    )


# 5. Every object goes with the job, so the name can be used again after its TTL.


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_after_the_ttl_nothing_is_left_and_the_name_is_free(kube, mode):
    kube.tfjob = mode == "tfjob"
    assert submit().exit_code == 0
    if mode == "tfjob":
        kube.operator.expire("study")
    else:
        for name in list(kube.objects("jobs")):
            kube.job_controller.expire(name)
        for name in kube.terminating():
            kube.finish_termination(name)
    left = {plural: list(items) for (_, plural), items in kube.store.items() if items and plural != "events"}
    assert left == {}
    again = submit()
    assert again.exit_code == 0, again.output
    assert "removed what an ended job left" not in again.stderr


def test_leftovers_of_an_ended_job_without_owners_are_removed_on_submit(kube):
    kube.put("serviceaccounts", {"metadata": {"name": "study", "labels": {"parallel-ml/job": "study"}}})
    result = submit()
    assert result.exit_code == 0, result.output
    assert "removed what an ended job left of study: deleted 1 objects" in result.stderr


# 7. --mode auto looks for the tfjobs resource, not the group.


def test_auto_mode_is_native_where_kubeflow_org_serves_no_tfjobs(kube):
    kube.tfjob, kube.kubeflow_group = False, True
    result = submit()
    assert result.exit_code == 0, result.output
    assert "mode native" in result.stdout and not kube.calls("POST", "/apis/kubeflow.org")


# 8. A user whose rights end at the namespace can submit a TFJob.


def test_a_namespaced_user_submits_a_tfjob_against_the_packaged_crd(kube):
    kube.namespaced_user()
    result = submit()
    assert result.exit_code == 0, result.output
    assert "may not read CustomResourceDefinitions" in result.stderr and "ships with pmlctl" in result.stderr
    assert ("TFJob", "study") in posted(kube)


def test_the_packaged_crd_is_the_shared_one():
    from deploy.k8s.target import PACKAGED_CRD

    assert PACKAGED_CRD.read_bytes() == CRD_FILE.read_bytes()


def test_a_forbidden_cluster_scoped_read_names_a_cluster_role(kube):
    kube.namespaced_user()
    api = kube_api.connect(None)
    with pytest.raises(kube_api.Forbidden) as err:
        api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/tfjobs.kubeflow.org")
    assert "ClusterRole" in str(err.value) and "at the cluster scope" in str(err.value)


def test_a_namespace_that_does_not_exist(kube):
    line = error_line(submit("-n", "nosuch"))
    assert "namespace nosuch does not exist" in line and "kubectl create namespace nosuch" in line


# 9. Pods that stay Pending for good end wait, status and logs -f.


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("CreateContainerConfigError", 'secret "pml-s3" not found'),
        ("ErrImageNeverPull", 'Container image "parallel-ml:latest" is not present with pull policy of Never'),
        ("CreateContainerError", "failed to create containerd container"),
        ("RunContainerError", "exec: python: not found"),
    ],
)
def test_a_container_that_cannot_start_fails_wait_and_ends_logs_follow(kube, reason, message):
    assert submit().exit_code == 0
    chief = kube.objects("pods")["study-chief-0"]
    chief["spec"]["nodeName"] = "node-1"
    chief["status"] = {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "tensorflow", "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}
        ],
    }
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "10")
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: pod study-chief-0 (chief-0) cannot start: {reason}: {message}; ")
    assert f"{reason}: {message}" in pmlctl("status", "study", "-t", "k8s").stdout
    logs = pmlctl("logs", "study", "-t", "k8s", "-f")
    assert logs.exit_code != 0 and f"cannot start: {reason}" in error_line(logs)


def test_logs_of_a_running_pod_whose_container_waits(kube):
    assert submit().exit_code == 0
    chief = kube.objects("pods")["study-chief-0"]
    chief["spec"]["nodeName"] = "node-1"
    chief["status"] = {
        "phase": "Running",
        "containerStatuses": [
            {"name": "tensorflow", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}
        ],
    }
    line = error_line(pmlctl("logs", "study", "-t", "k8s"))
    assert "is waiting to start: PodInitializing" in line and "-f" in line


# 12. wait rides out a control plane that answers 429 or 5xx for a while.


@pytest.mark.parametrize("code", [429, 503])
def test_wait_retries_transient_api_errors(kube, code):
    assert submit().exit_code == 0
    run_all(kube)
    kube.operator.exit("study-chief-0", 0)
    kube.fail("GET", code, times=3)
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "60")
    assert result.exit_code == 0, result.output
    assert result.stderr.count(f"{code}") == 1 and "trying again until it answers" in result.stderr


@pytest.mark.parametrize("code", [429, 503])
@pytest.mark.parametrize("command", ["status", "submit"])
def test_a_control_plane_that_cannot_serve_is_unavailable_not_bad_input(kube, code, command):
    """Exit 3 (try again later), not 2 (fix the input): nothing in the command is wrong."""
    if command == "status":
        assert submit().exit_code == 0
    kube.fail("GET", code, times=1000)
    result = submit() if command == "submit" else pmlctl("status", "study", "-t", "k8s")
    assert result.exit_code == 3, result.output
    assert f": {code} " in error_line(result)


def test_wait_gives_up_on_a_silent_cluster_only_at_its_timeout(kube):
    assert submit().exit_code == 0
    kube.fail("GET", 503, times=1000)
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "1")
    assert result.exit_code == 2 and "did not answer before --timeout 1s ended" in result.stderr


# 10, 11, 15: what the pods and the TFJob carry.


def rendered(**fields) -> list[dict]:
    spec = JobSpec.model_validate({"name": "study", "replicas": {"workers": 2, "ps": 1}, **fields})
    return render.objects(render.render(spec, validate=False).manifest)


def templates(objects: list[dict]) -> list[dict]:
    found = []
    for obj in objects:
        if obj["kind"] == "TFJob":
            found += [r["template"] for r in obj["spec"]["tfReplicaSpecs"].values()]
        elif obj["kind"] == "Job":
            found.append(obj["spec"]["template"])
    return found


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_pods_opt_out_of_istio_and_fail_fast_under_a_ps(mode):
    for template in templates(rendered(mode=mode)):
        assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env["GRPC_FAIL_FAST"] == "use_caller"
    mirrored = rendered(mode=mode, replicas={"workers": 2, "ps": 0})
    assert all(
        "GRPC_FAIL_FAST" not in {e["name"] for e in t["spec"]["containers"][0]["env"]} for t in templates(mirrored)
    )


def test_kueue_reads_the_queue_from_the_tfjobs_own_labels():
    tfjob = next(o for o in rendered(scheduling={"queue": "team-a"}) if o["kind"] == "TFJob")
    assert tfjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert tfjob["spec"]["runPolicy"]["schedulingPolicy"]["queue"] == "team-a"  # Volcano's


def test_a_native_job_with_a_queue_says_it_is_admitted_task_by_task(kube, tmp_path):
    kube.tfjob = False
    job = tmp_path / "queued.yaml"
    job.write_text(yaml.safe_dump({"scheduling": {"queue": "team-a"}}))
    done = submit("-f", str(job), "--dry-run")
    assert done.exit_code == 0 and "admits each task's Job of a native job on its own" in done.stderr


# The fake's own rules, where a client could lean on them.


def test_the_fakes_label_selectors_are_set_based():
    from k8s_fake import selector_matches

    labels = {"app": "pml", "role": "ps"}
    assert selector_matches("app=pml,role in (ps, worker)", labels)
    assert not selector_matches("role notin (ps)", labels)
    assert selector_matches("tier notin (db),!gone,app", labels)
    assert not selector_matches("app!=pml", labels) and selector_matches("tier!=x", labels)


def test_deleting_a_job_without_a_policy_orphans_its_pods(kube):
    kube.tfjob = False
    assert submit().exit_code == 0
    job = copy.deepcopy(kube.objects("jobs")["study-chief-0"])
    kube.delete("default", "jobs", "study-chief-0")
    kube.settle()
    assert "study-chief-0" not in kube.objects("jobs")
    orphans = [
        p
        for p in kube.objects("pods").values()
        if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job["metadata"]["name"]
    ]
    assert orphans and all(not p["metadata"]["ownerReferences"] for p in orphans)


def test_clean_pod_policy_running_deletes_a_running_evaluator_when_the_chief_succeeds(kube, tmp_path):
    """Why the chief waits for the evaluator's final evaluation (tests/test_evaluator_end.py)."""
    job = tmp_path / "eval.yaml"
    job.write_text(yaml.safe_dump({"replicas": {"evaluator": 1}}))
    assert submit("-f", str(job)).exit_code == 0
    run_all(kube)
    kube.operator.exit("study-chief-0", 0)
    assert "Succeeded" in conditions(kube)
    assert "study-evaluator-0" in kube.terminating()


def test_a_refused_object_names_the_field_at_fault(kube):
    api = kube_api.connect(None)
    with pytest.raises(kube_api.KubeError) as err:
        api.create(
            "/api/v1/namespaces/default/serviceaccounts",
            {"metadata": {"name": "study", "labels": {"parallel-ml/job": "-bad-"}}},
        )
    assert str(err.value).startswith(
        'the cluster refused create serviceaccounts in namespace default: metadata.labels: Invalid value: "-bad-"'
    )


def test_a_user_who_may_not_patch_still_submits_and_is_told_what_stays(kube):
    kube.forbidden.add(("patch", "serviceaccounts"))
    result = submit()
    assert result.exit_code == 0, result.output
    assert "may not patch serviceaccounts in namespace default, so ServiceAccount/study stays" in result.stderr
    assert kube.objects("networkpolicies")["study"]["metadata"]["ownerReferences"][0]["kind"] == "TFJob"


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_every_task_knows_its_job_by_namespace_and_name(mode):
    """The chief names its job in every pointer it writes, and refuses a second job on its model dir
    (trainer/checkpoints.py): the name must be the same for every task and restart of one job."""
    from pml_trainer.checkpoints import JOB_ENV

    spec = JobSpec.model_validate(
        {"name": "study", "namespace": "ml", "mode": mode, "replicas": {"workers": 2, "ps": 1}}
    )
    for template in templates(render.objects(render.render(spec, validate=False).manifest)):
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env[JOB_ENV] == "ml/study"


# Issue 26, item 9: a 403 from admission is not an RBAC matter.


def test_a_webhook_denial_shows_its_message_and_does_not_blame_rbac(kube):
    kube.webhook_denials[("create", "tfjobs")] = (
        "warden-validating.common-webhooks.networking.gke.io",
        "GKE Warden rejected the request because it violates one or more constraints.",
    )
    line = error_line(submit())
    assert "GKE Warden rejected the request because it violates one or more constraints." in line
    assert "admission webhook warden-validating.common-webhooks.networking.gke.io" in line
    assert "Role" not in line and "RBAC" in line  # "not RBAC"
    assert "not RBAC" in line


def test_an_rbac_denial_on_create_still_names_a_role(kube):
    kube.forbidden.add(("create", "tfjobs"))
    line = error_line(submit())
    assert 'cannot create resource "tfjobs"' in line and "ask a cluster admin for a Role" in line


@pytest.mark.parametrize(
    "message",
    [
        'pods "study-chief-0" is forbidden: exceeded quota: compute, requested: cpu=4, used: cpu=8, limited: cpu=10',
        'pods "study-chief-0" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true',
    ],
)
def test_another_admission_denial_is_shown_as_the_server_says(message):
    err = kube_api._denied("create pods in namespace ml", "kind-pml", message)
    assert isinstance(err, kube_api.Denied) and not isinstance(err, kube_api.Forbidden)
    assert message in str(err) and "not RBAC" in str(err) and "Role" not in str(err)
