"""The Helm chart: both modes for the study's shape and the edge shapes, every object validated
(Kubernetes 1.30 schemas, the TFJob CRD, our own rules), TF_CONFIG read by TensorFlow itself,
random specs by the hundred, Helm lint, and the generated files kept fresh."""

from __future__ import annotations

import copy
import json
import re
import time

import helm_python
import pytest
import yaml
from conftest import ROOT, shared_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy import chart, validate
from deploy.render import manifest, objects, render, values_yaml
from deploy.spec import MAX_NAME, TF_PORT, JobSpec, Security
from deploy.spec import ROLES as ROLE_ORDER
from pml_trainer import exits
from pml_trainer.errors import BadInput
from pml_trainer.options import parse_args

CRD = shared_dir() / "schemas" / "kubeflow.org_tfjobs.yaml"
GPU_WORKERS = {
    "worker": {
        "resources": {"cpu": "4", "memory": "16Gi", "gpu": 2},
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
}
SHAPES = {
    "study": {"replicas": {"workers": 6, "ps": 3}},
    "ps-0": {"replicas": {"workers": 3, "ps": 0}},
    "workers-0": {"replicas": {"workers": 0, "ps": 0}},
    "evaluator": {"replicas": {"workers": 2, "ps": 1, "evaluator": 1}},
    "gpu-workers": {"replicas": {"workers": 2, "ps": 1}, "roles": GPU_WORKERS},
}
TYPES = {"chief": "Chief", "worker": "Worker", "ps": "PS", "evaluator": "Evaluator"}

IGNORE_PREEMPTION = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def job(mode: str, shape: dict, **more) -> JobSpec:
    return JobSpec.model_validate({"name": "study", "namespace": "ml", "mode": mode, **shape, **more})


def rendered(spec: JobSpec) -> list[dict]:
    return objects(render(spec, crd=CRD).manifest)


def tasks(spec: JobSpec) -> list[tuple[str, int]]:
    return [(role, i) for role, count in spec.replicas.cluster_roles().items() for i in range(count)]


def expected_cluster(spec: JobSpec) -> dict[str, list[str]]:
    return spec.replicas.cluster(lambda role, i: f"{spec.name}-{role}-{i}.{spec.namespace}.svc:2222")


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_templates(objs: list[dict]) -> list[tuple[str, dict]]:
    """(role, pod template) of every task kind in either mode."""
    found = [
        (o["spec"]["template"]["metadata"]["labels"]["parallel-ml/role"], o["spec"]["template"])
        for o in objs
        if o["kind"] == "Job"
    ]
    for tfjob in by_kind(objs, "TFJob").values():
        found += [
            (t["template"]["metadata"]["labels"]["parallel-ml/role"], t["template"])
            for t in tfjob["spec"]["tfReplicaSpecs"].values()
        ]
    return found


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_crd_is_the_shared_one():
    assert CRD.is_file(), f"TFJob CRD missing at {CRD}; set PML_SHARED"


@pytest.mark.parametrize("shape", SHAPES)
def test_tfjob_mode_gives_one_tfjob_with_the_operator_conventions(shape):
    spec = job("tfjob", SHAPES[shape])
    objs = rendered(spec)
    assert sorted(o["kind"] for o in objs) == ["NetworkPolicy", "ServiceAccount", "TFJob"]
    tfjob = by_kind(objs, "TFJob")["study"]
    assert tfjob["apiVersion"] == "kubeflow.org/v1" and tfjob["metadata"]["namespace"] == "ml"
    assert tfjob["spec"]["runPolicy"] == {
        "cleanPodPolicy": "Running",
        "backoffLimit": 6,
        "ttlSecondsAfterFinished": 86400,
    }
    replica_specs = tfjob["spec"]["tfReplicaSpecs"]
    counts = {role: count for role, count in spec.replicas.cluster_roles().items() if count}
    assert {kind: r["replicas"] for kind, r in replica_specs.items()} == {
        TYPES[role]: count for role, count in counts.items()
    }
    for kind, replica in replica_specs.items():
        assert replica["restartPolicy"] == ("OnFailure" if kind == "PS" else "ExitCode")
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "tensorflow"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == ({"tfjob-port": 2222, "control": 2223} if kind == "Chief" else {"tfjob-port": 2222})
        # The operator injects TF_CONFIG itself.
        assert "TF_CONFIG" not in env_of(container)


@pytest.mark.parametrize("shape", SHAPES)
def test_native_mode_gives_a_service_and_a_job_per_task_at_tfjob_addresses(shape):
    spec = job("native", SHAPES[shape])
    objs = rendered(spec)
    names = {f"study-{role}-{i}" for role, i in tasks(spec)}
    services, jobs = by_kind(objs, "Service"), by_kind(objs, "Job")
    assert set(services) == names and set(jobs) == names
    assert {o["kind"] for o in objs} == {"Service", "Job", "ServiceAccount", "NetworkPolicy"}
    for name, service in services.items():
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
        pod_labels = jobs[name]["spec"]["template"]["metadata"]["labels"]
        selector = service["spec"]["selector"]
        assert selector.items() <= pod_labels.items()
        # No other task's pod matches this Service.
        assert all(
            not selector.items() <= j["spec"]["template"]["metadata"]["labels"].items()
            for other, j in jobs.items()
            if other != name
        )
    chief = jobs["study-chief-0"]["spec"]
    assert chief["template"]["spec"]["restartPolicy"] == "Never"
    preempted, lost_a_peer, rule = chief["podFailurePolicy"]["rules"]
    assert preempted == IGNORE_PREEMPTION
    assert lost_a_peer["action"] == "Ignore" and lost_a_peer["onExitCodes"]["values"] == [exits.PEER_LOST]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == list(range(1, 128))
    for name, j in jobs.items():
        pod = j["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"  # the only policy a podFailurePolicy allows
        if "-ps-" in name:  # as the others under ExitCode: a preemption does not count, 1-127 is for good
            assert j["spec"]["podFailurePolicy"] == chief["podFailurePolicy"]
        assert j["spec"]["backoffLimit"] == 6 and j["spec"]["ttlSecondsAfterFinished"] == 86400


@pytest.mark.parametrize("shape", SHAPES)
def test_each_native_pod_gets_the_tf_config_tensorflow_expects(shape, monkeypatch):
    import tensorflow as tf

    TFConfigClusterResolver = tf.distribute.cluster_resolver.TFConfigClusterResolver

    spec = job("native", SHAPES[shape])
    jobs = by_kind(rendered(spec), "Job")
    for role, index in tasks(spec):
        (container,) = jobs[f"study-{role}-{index}"]["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        if len(tasks(spec)) == 1:
            # Like TFJob: a lone task runs without a cluster.
            assert "TF_CONFIG" not in env
            continue
        monkeypatch.setenv("TF_CONFIG", env["TF_CONFIG"]["value"])
        resolver = TFConfigClusterResolver()
        assert resolver.cluster_spec().as_dict() == expected_cluster(spec)
        assert (resolver.task_type, resolver.task_id) == (role, index)


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_trainer_flags_reach_every_task_and_parse_back(mode):
    spec = job(
        mode,
        SHAPES["study"],
        trainer={
            "epochs": 3,
            "train_examples": 1_000_000,
            "learning_rate": 1e-5,
            "dataset": "synthetic:32x32x3",
            "orphan_timeout": 600.5,
            "single_writer": True,
        },
    )
    for _, template in pod_templates(rendered(spec)):
        args = template["spec"]["containers"][0]["args"]
        expected = spec.trainer.model_copy(update={"model_dir": "/scratch/runs/study"})
        assert parse_args(args) == expected


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_secure_defaults_on_every_pod(mode):
    spec = job(mode, SHAPES["evaluator"])
    objs = rendered(spec)
    for role, template in pod_templates(objs):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["serviceAccountName"] == "study" and pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts == {"/scratch": "scratch", "/tmp": "tmp"}
        assert all("emptyDir" in v for v in pod["volumes"])
        labels = template["metadata"]["labels"]
        assert labels["parallel-ml/job"] == "study" and labels["app.kubernetes.io/component"] == role
        assert labels["app.kubernetes.io/name"] == "parallel-ml" and labels["app.kubernetes.io/instance"] == "study"
    account = by_kind(objs, "ServiceAccount")["study"]
    assert account["automountServiceAccountToken"] is False
    policy = by_kind(objs, "NetworkPolicy")["study"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {"parallel-ml/job": "study"}}
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"parallel-ml/job": "study"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 2222}, {"protocol": "TCP", "port": 2223}]
    assert all(o["metadata"]["labels"]["parallel-ml/job"] == "study" for o in objs)


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_gpus_and_placement_only_on_workers(mode):
    for role, template in pod_templates(rendered(job(mode, SHAPES["gpu-workers"]))):
        pod = template["spec"]
        resources = pod["containers"][0]["resources"]
        if role == "worker":
            assert resources == {
                "requests": {"cpu": "4", "memory": "16Gi"},
                "limits": {"memory": "16Gi", "nvidia.com/gpu": 2},
            }
            assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
            assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert resources == {} and "nodeSelector" not in pod and "tolerations" not in pod


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_credentials_come_from_a_secret_and_workload_identity_from_the_account(mode):
    spec = job(
        mode,
        SHAPES["ps-0"],
        credentials={"secret": "s3-creds"},
        service_account={"gcp_service_account": "trainer@proj.iam.gserviceaccount.com"},
    )
    objs = rendered(spec)
    for _, template in pod_templates(objs):
        env = env_of(template["spec"]["containers"][0])
        assert env["AWS_SECRET_ACCESS_KEY"] == {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}},
        }
    annotations = by_kind(objs, "ServiceAccount")["study"]["metadata"]["annotations"]
    assert annotations == {"iam.gke.io/gcp-service-account": "trainer@proj.iam.gserviceaccount.com"}


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_an_existing_service_account_is_used_and_none_created(mode):
    objs = rendered(job(mode, SHAPES["study"], service_account={"create": False, "name": "trainers"}))
    assert "ServiceAccount" not in {o["kind"] for o in objs}
    assert {t["spec"]["serviceAccountName"] for _, t in pod_templates(objs)} == {"trainers"}


def test_run_policy_and_scheduling_in_both_modes():
    more = {
        "policy": {
            "restart_policy": "OnFailure",
            "backoff_limit": 2,
            "active_deadline_seconds": 3600,
            "ttl_seconds_after_finished": None,
            "clean_pod_policy": "All",
        },
        "scheduling": {"queue": "research", "priority_class": "high"},
    }
    tfjob = by_kind(rendered(job("tfjob", SHAPES["study"], **more)), "TFJob")["study"]["spec"]
    assert tfjob["runPolicy"] == {
        "cleanPodPolicy": "All",
        "backoffLimit": 2,
        "activeDeadlineSeconds": 3600,
        "schedulingPolicy": {"queue": "research", "priorityClass": "high"},
    }
    assert tfjob["tfReplicaSpecs"]["Worker"]["restartPolicy"] == "OnFailure"
    assert tfjob["tfReplicaSpecs"]["Worker"]["template"]["spec"]["priorityClassName"] == "high"
    for name, j in by_kind(rendered(job("native", SHAPES["study"], **more)), "Job").items():
        assert j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
        assert (j["spec"]["backoffLimit"], j["spec"]["activeDeadlineSeconds"]) == (2, 3600)
        assert "ttlSecondsAfterFinished" not in j["spec"]
        # OnFailure: a new pod after any failure, but a preemption does not count; a ps's 1-127 is final.
        assert j["spec"]["podFailurePolicy"]["rules"][0] == IGNORE_PREEMPTION
        assert len(j["spec"]["podFailurePolicy"]["rules"]) == (3 if "-ps-" in name else 2)
        assert j["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_restart_policy_never_fails_a_native_job_on_any_error():
    jobs = by_kind(rendered(job("native", SHAPES["ps-0"], policy={"restart_policy": "Never"})), "Job")
    (rule,) = jobs["study-worker-0"]["spec"]["podFailurePolicy"]["rules"]
    assert rule == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "tensorflow", "operator": "NotIn", "values": [0]},
    }


def test_relative_model_dir_lands_in_scratch_and_remote_stays():
    assert "--model-dir" in (
        args := pod_templates(rendered(job("native", SHAPES["ps-0"])))[0][1]["spec"]["containers"][0]["args"]
    )
    assert args[args.index("--model-dir") + 1] == "/scratch/runs/study"
    result = render(job("tfjob", SHAPES["ps-0"], trainer={"model_dir": "gs://bucket/study"}), crd=CRD)
    assert '- "gs://bucket/study"' in result.manifest
    assert not any("model dir" in note for note in result.notes)
    with pytest.raises(BadInput, match="--model-dir /data/run: the pods' root filesystem is read-only"):
        render(job("native", SHAPES["ps-0"], trainer={"model_dir": "/data/run"}), crd=CRD)


# --- validation catches what a cluster would refuse or silently drop ----------------------------


def tfjob_object() -> dict:
    return copy.deepcopy(by_kind(rendered(job("tfjob", SHAPES["evaluator"])), "TFJob")["study"])


def refusal(obj: dict) -> str:
    with pytest.raises(BadInput) as caught:
        validate.check([obj], CRD)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_unknown_field_in_a_tfjob_fails_against_the_strict_crd():
    obj = tfjob_object()
    obj["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["gpus"] = 1
    assert refusal(obj) == (
        "TFJob/study: spec.tfReplicaSpecs.Worker.template.spec.containers[0]: Additional properties are not "
        f"allowed ('gpus' was unexpected); remove the field or fix its spelling (per the TFJob CRD in {CRD})"
    )


def test_wrong_type_in_a_tfjob_names_the_path():
    obj = tfjob_object()
    obj["spec"]["runPolicy"]["backoffLimit"] = "six"
    assert refusal(obj).startswith("TFJob/study: spec.runPolicy.backoffLimit: 'six' is not of type integer")


def test_int_or_string_fields_take_both():
    obj = tfjob_object()
    obj["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"cpu": 2, "memory": "1Gi"}
    }
    validate.check([obj], CRD)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda o: o["spec"]["tfReplicaSpecs"].__setitem__("Master", o["spec"]["tfReplicaSpecs"].pop("Chief")),
            "spec.tfReplicaSpecs.Master: unknown replica type; use Chief, Worker, PS, Evaluator (Chief, never Master",
        ),
        (
            lambda o: o["spec"]["tfReplicaSpecs"]["Chief"].__setitem__("replicas", 2),
            "spec.tfReplicaSpecs.Chief.replicas: 2 chiefs; a job has exactly one",
        ),
        (
            lambda o: o["spec"]["tfReplicaSpecs"]["PS"].__setitem__("restartPolicy", "Sometimes"),
            "spec.tfReplicaSpecs.PS.restartPolicy: 'Sometimes' is not a policy",
        ),
        (
            lambda o: o["spec"]["runPolicy"].__setitem__("cleanPodPolicy", "Finished"),
            "spec.runPolicy.cleanPodPolicy: 'Finished' is not a policy; use Running",
        ),
        (
            lambda o: o["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].__setitem__(
                "name", "main"
            ),
            "spec.tfReplicaSpecs.Worker.template.spec.containers: no container named tensorflow",
        ),
        (lambda o: o["metadata"].__setitem__("name", "Study_1"), "metadata.name: must be a DNS-1035 label"),
        (
            lambda o: o["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["env"].append(
                {"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"}
            ),
            "AWS_SECRET_ACCESS_KEY looks like a credential given as a literal value; put it in a Secret",
        ),
    ],
)
def test_what_the_webhook_checks_is_checked_here(change, message):
    obj = tfjob_object()
    change(obj)
    assert message in refusal(obj)


def test_unknown_field_in_a_builtin_kind_fails_against_kubernetes_schemas():
    j = by_kind(rendered(job("native", SHAPES["ps-0"])), "Job")["study-worker-1"]
    j["spec"]["template"]["spec"]["restart_policy"] = "Never"
    assert refusal(j) == (
        "Job/study-worker-1: spec.template.spec: Additional properties are not allowed "
        "('restart_policy' was unexpected); remove the field or fix its spelling "
        "(per Kubernetes 1.30.0)"
    )


def test_wrong_type_in_a_builtin_kind_names_the_path():
    j = by_kind(rendered(job("native", SHAPES["ps-0"])), "Job")["study-worker-1"]
    j["spec"]["backoffLimit"] = "6"
    assert refusal(j).startswith("Job/study-worker-1: spec.backoffLimit: '6' is not of type integer")


def test_a_native_tf_config_the_trainer_would_refuse_is_refused():
    j = by_kind(rendered(job("native", SHAPES["ps-0"])), "Job")["study-worker-1"]
    env = j["spec"]["template"]["spec"]["containers"][0]["env"]
    env[0]["value"] = json.dumps({"cluster": {"chief": ["a:2222", "b:2222"]}, "task": {"type": "chief"}})
    assert "TF_CONFIG: 2 chiefs in the cluster" in refusal(j)


def test_strict_schema_translates_the_kubernetes_extensions():
    schema = validate.strict_schema(
        {
            "type": "object",
            "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
            },
        }
    )
    assert schema["additionalProperties"] is False
    assert schema["properties"]["port"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert schema["properties"]["note"] == {"type": ["string", "null"]}
    assert "additionalProperties" not in schema["properties"]["free"]


def test_a_file_that_is_not_the_crd_is_refused(tmp_path):
    bogus = tmp_path / "crd.yaml"
    bogus.write_text("kind: ConfigMap\n")
    with pytest.raises(BadInput, match="not the TFJob CustomResourceDefinition"):
        validate.check([tfjob_object()], bogus)


# --- the chart as Helm sees it --------------------------------------------------------------------


def test_helm_lint_strict_passes():
    result = helm_python.lint(str(chart.chart_dir()), strict=True)
    assert result["errors"] == []
    assert all(m["severity"] <= 1 for m in result["messages"]), result["messages"]


def test_generated_values_and_schema_are_fresh():
    assert chart.stale_files(chart.chart_dir()) == [], "regenerate them: python -m deploy.chart"


def test_helm_applies_the_generated_schema_to_values():
    with helm_python.Chart.load(str(chart.chart_dir())) as loaded:
        loaded.validate_schema(chart.values(job("native", SHAPES["gpu-workers"])))
        for bad in (
            {"replicas": {"workers": -1}},
            {"roles": {"worker": {"resources": {"memory": "4GB"}}}},
            {"replicas": {"chief": 2}},
            {"mode": "kubeflow"},
            {"typo": 1},
        ):
            with pytest.raises(helm_python.HelmValuesError):
                loaded.validate_schema(bad)


def test_values_are_a_job_file():
    spec = job("native", SHAPES["gpu-workers"], trainer={"epochs": 2})
    again = JobSpec.model_validate({**yaml.safe_load(yaml.safe_dump(chart.values(spec))), "namespace": "ml"})
    assert again == spec


def test_helm_users_get_the_same_name_rules():
    with helm_python.Chart.load(str(chart.chart_dir())) as loaded:
        with pytest.raises(helm_python.HelmValuesError, match="maxLength: got 52, want 51"):
            loaded.render(values={"name": "x" * 52}, name="ok", namespace="ml")
        # Without a name in the values the job takes the release's, which the chart checks.
        with pytest.raises(helm_python.HelmRenderError, match=r'name "a\.b" must be a DNS-1035 label'):
            loaded.render(values={}, name="a.b", namespace="ml")
        (tfjob,) = objects(
            loaded.render(values={}, name="from-release", namespace="ml")["parallel-ml/templates/tfjob.yaml"]
        )
    assert tfjob["metadata"]["name"] == "from-release"


def test_the_chart_and_the_job_spec_share_their_constants():
    """The TF port, the name limit and the role order are defined in deploy/spec.py and, in Go
    templates that cannot read Python, in the chart (templates/_helpers.tpl): the two must agree."""
    spec = JobSpec.model_validate({"name": "x" * MAX_NAME, "namespace": "ml", "mode": "native", **SHAPES["evaluator"]})
    objs = rendered(spec)
    ports = {p["name"]: p["containerPort"] for _, t in pod_templates(objs) for p in t["spec"]["containers"][0]["ports"]}
    assert ports == {"tfjob-port": TF_PORT, "control": TF_PORT + 1}
    chief = by_kind(objs, "Job")[f"{spec.name}-chief-0"]["spec"]["template"]["spec"]["containers"][0]
    cluster = json.loads(env_of(chief)["TF_CONFIG"]["value"])["cluster"]
    assert all(a.endswith(f".svc:{TF_PORT}") for addresses in cluster.values() for a in addresses)
    assert f"EXPOSE {TF_PORT} {TF_PORT + 1}" in (ROOT / "Dockerfile").read_text()
    assert [role for role, _ in pod_templates(objs)] == ["chief", "worker", "worker", "ps", "evaluator"]
    assert list(ROLE_ORDER) == ["chief", "worker", "ps", "evaluator"]
    tfjob = by_kind(rendered(job("tfjob", SHAPES["evaluator"])), "TFJob")["study"]
    assert list(tfjob["spec"]["tfReplicaSpecs"]) == [TYPES[r] for r in ROLE_ORDER]
    with helm_python.Chart.load(str(chart.chart_dir())) as loaded:  # a release name meets the template's own check
        assert loaded.render(values={}, name="x" * MAX_NAME, namespace="ml")
        with pytest.raises(helm_python.HelmRenderError, match=f"at most {MAX_NAME} characters"):
            loaded.render(values={}, name="x" * (MAX_NAME + 1), namespace="ml")


def test_install_dry_run_has_what_the_templates_render():
    spec = job("native", SHAPES["evaluator"])
    with helm_python.Chart.load(str(chart.chart_dir())) as loaded:
        files = loaded.render(values=chart.values(spec), name=spec.name, namespace=spec.namespace)
    from_templates = [doc for text in files.values() for doc in objects(text)]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(objects(manifest(spec)), key=key) == sorted(from_templates, key=key)


# --- random valid specs, both modes ---------------------------------------------------------------

NAMES = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}[a-z0-9]\Z")
QUANTITIES = st.one_of(
    st.none(), st.sampled_from(["100m", "2", "1.5", "512Mi", "4Gi", "1e9", ".5"]), st.integers(1, 64)
)
LABEL_VALUES = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,10}[a-z0-9])?\Z")
ROLES = st.fixed_dictionaries(
    {
        "resources": st.fixed_dictionaries({"cpu": QUANTITIES, "memory": QUANTITIES, "gpu": st.integers(0, 4)}),
        "node_selector": st.dictionaries(
            st.sampled_from(["pool", "kubernetes.io/arch", "zone"]), LABEL_VALUES, max_size=2
        ),
        "tolerations": st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {"key": st.sampled_from(["nvidia.com/gpu", "spot"]), "operator": st.just("Exists")}
                ),
                st.fixed_dictionaries(
                    {
                        "key": st.just("dedicated"),
                        "value": LABEL_VALUES,
                        "effect": st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"]),
                    }
                ),
            ),
            max_size=2,
        ),
    }
)


@st.composite
def job_specs(draw) -> dict:
    workers = draw(st.integers(0, 10))
    return {
        "name": draw(NAMES),
        "namespace": draw(NAMES),
        "image": draw(st.sampled_from(["parallel-ml:latest", "gcr.io/p/trainer@sha256:" + "a" * 64])),
        "image_pull_policy": draw(st.sampled_from(["Always", "IfNotPresent", "Never"])),
        "replicas": {
            "workers": workers,
            "ps": draw(st.integers(0, 4)) if workers else 0,
            "evaluator": draw(st.integers(0, 1)),
        },
        "trainer": draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "epochs": st.integers(1, 10**7),
                    "batch_size": st.integers(1, 4096),
                    "learning_rate": st.floats(1e-9, 10, allow_nan=False),
                    "train_examples": st.integers(1, 10**9),
                    "model_dir": st.sampled_from(["gs://bkt/run", "s3://bkt/x/y", "/scratch/run", "runs/x"]),
                    "model": st.sampled_from(["mlp", "cnn"]),
                    "dataset": st.sampled_from(["synthetic", "flowers"]),
                    "orphan_timeout": st.floats(0.5, 1e6),
                },
            )
        ),
        "env": draw(
            st.dictionaries(
                st.from_regex(r"\A[A-Z][A-Z0-9_]{0,8}\Z").filter(
                    lambda k: not validate.SECRET_LIKE.search(k) and k != "TF_CONFIG"
                ),
                st.text(max_size=20),
                max_size=3,
            )
        ),
        "roles": draw(st.fixed_dictionaries(dict.fromkeys(TYPES, ROLES))),
        "credentials": draw(st.one_of(st.none(), st.just({"secret": "storage"}))),
        "service_account": draw(
            st.one_of(
                st.fixed_dictionaries(
                    {"gcp_service_account": st.one_of(st.none(), st.just("t@p.iam.gserviceaccount.com"))}
                ),
                st.fixed_dictionaries({"create": st.just(False), "name": NAMES}),
            )
        ),
        "policy": draw(
            st.fixed_dictionaries(
                {
                    "restart_policy": st.sampled_from(["ExitCode", "OnFailure", "Never"]),
                    "backoff_limit": st.integers(0, 100),
                    "active_deadline_seconds": st.one_of(st.none(), st.integers(1, 10**6)),
                    "ttl_seconds_after_finished": st.one_of(st.none(), st.integers(0, 10**6)),
                    "clean_pod_policy": st.sampled_from(["Running", "All", "None"]),
                }
            )
        ),
        "scheduling": draw(
            st.fixed_dictionaries({"queue": st.one_of(st.none(), NAMES), "priority_class": st.one_of(st.none(), NAMES)})
        ),
        "security": {"run_as_user": draw(st.integers(1, 65535)), "run_as_group": draw(st.integers(0, 65535))},
    }


def test_hundreds_of_random_specs_render_and_validate_in_both_modes():
    seen = []

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(job_specs())
    def render_both(doc):
        for mode in ("tfjob", "native"):
            spec = JobSpec.model_validate({**doc, "mode": mode})
            objs = rendered(spec)
            model_dir = (
                spec.model_dir if spec.model_dir.startswith(("/", "gs://", "s3://")) else f"/scratch/{spec.model_dir}"
            )
            templates = pod_templates(objs)
            assert sorted(role for role, _ in templates) == sorted(
                role
                for role, count in spec.replicas.cluster_roles().items()
                for _ in range(count if mode == "native" else min(count, 1))
            )
            # The one flag the chart derives: a queued native job's wait for its chief.
            derived = {"model_dir": model_dir}
            if mode == "native" and spec.scheduling.queue and spec.trainer.chief_start_timeout is None:
                derived["chief_start_timeout"] = 21600.0
            for _, template in templates:
                args = template["spec"]["containers"][0]["args"]
                assert parse_args(args) == spec.trainer.model_copy(update=derived)
            seen.append(mode)

    started = time.monotonic()
    render_both()
    assert seen.count("tfjob") >= 200 and seen.count("native") >= 200
    assert time.monotonic() - started < 120


@pytest.mark.parametrize("mode", ["tfjob", "native"])
def test_a_priority_class_that_yaml_would_read_as_a_boolean_stays_a_string(mode):
    """Found by the random specs: `priorityClassName: True` unquoted became a YAML boolean."""
    from deploy import render as rendering

    spec = JobSpec.model_validate({"name": "study", "mode": mode, "scheduling": {"priority_class": "True"}})
    objects = rendering.objects(rendering.render(spec, validate=False).manifest)
    pods = [
        r["template"]["spec"] for o in objects if o["kind"] == "TFJob" for r in o["spec"]["tfReplicaSpecs"].values()
    ]
    pods += [o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Job"]
    assert pods and all(p["priorityClassName"] == "True" for p in pods)


def test_the_pods_run_as_the_images_own_user():
    """Issue 26, item 10: one user, written in the Dockerfile, the JobSpec's default and the chart's values."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    (uid,) = re.findall(r"^ARG UID=(\d+)$", dockerfile, re.M)
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", dockerfile, re.M)
    assert "groupadd --gid ${UID}" in dockerfile and "useradd --uid ${UID} --gid ${UID}" in dockerfile
    values = yaml.safe_load((ROOT / "charts/parallel-ml/values.yaml").read_text())
    assert values["security"] == {"run_as_user": int(uid), "run_as_group": int(uid)}
    assert (Security().run_as_user, Security().run_as_group) == (int(uid), int(uid))


@pytest.mark.parametrize(
    ("mode", "queue", "given", "waits"),
    [
        ("native", "research", None, "21600"),  # Kueue admits each task's Job on its own
        ("native", None, None, None),  # the trainer's default
        ("tfjob", "research", None, None),  # admitted as one gang
        ("native", "research", 900, "900"),  # the user's word stands
    ],
)
def test_a_native_job_in_a_queue_waits_for_its_chief_as_long_as_the_queue_holds_it(mode, queue, given, waits):
    trainer = {} if given is None else {"chief_start_timeout": given}
    spec = job(mode, SHAPES["study"], scheduling={"queue": queue}, trainer=trainer)
    for role, template in pod_templates(rendered(spec)):
        args = template["spec"]["containers"][0]["args"]
        flag = "--chief-start-timeout"
        assert (args[args.index(flag) + 1] if flag in args else None) == waits, role


def test_the_queued_wait_is_derived_again_after_a_round_trip_through_values():
    """A values file written for a queued native job and then freed of its queue waits as any job."""
    spec = job("native", SHAPES["study"], scheduling={"queue": "research"})
    doc = yaml.safe_load(values_yaml(spec))
    assert doc["trainer"]["chief_start_timeout"] is None  # not written out: derived each time
    doc["scheduling"]["queue"] = None
    freed = JobSpec.model_validate({**doc, "namespace": "ml"})
    for _role, template in pod_templates(rendered(freed)):
        assert "--chief-start-timeout" not in template["spec"]["containers"][0]["args"]
