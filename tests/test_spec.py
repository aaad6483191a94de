"""`JobSpec`: the Kubernetes fields, their checks and their one-line errors."""

from __future__ import annotations

import pytest

from deploy.spec import JobSpec, load
from pml_trainer.errors import BadInput


def refused(overrides: dict, path=None) -> str:
    with pytest.raises(BadInput) as caught:
        load(path, overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_are_safe_and_complete():
    spec = JobSpec(name="study")
    assert spec.mode == "tfjob"
    assert spec.image_pull_policy == "IfNotPresent"
    assert spec.policy.restart_policy == "ExitCode"
    assert spec.policy.clean_pod_policy == "Running"
    assert spec.policy.backoff_limit == 6
    assert spec.policy.ttl_seconds_after_finished == 86400
    assert spec.service_account.create is True
    assert spec.security.run_as_user == 10001
    assert spec.credentials is None
    assert spec.roles.worker.resources.gpu == 0 and spec.roles.worker.resources.cpu is None
    assert spec.model_dir == "runs/study"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("500m", "500m"),
        (2, "2"),
        (0.5, "0.5"),
        ("1.5", "1.5"),
        ("4Gi", "4Gi"),
        ("512M", "512M"),
        ("1e9", "1e9"),
        (".5", ".5"),
    ],
)
def test_quantities_kubernetes_accepts_are_kept_as_strings(given, kept):
    spec = JobSpec(name="q", roles={"worker": {"resources": {"cpu": given, "memory": given}}})
    assert spec.roles.worker.resources.cpu == kept
    assert spec.roles.worker.resources.memory == kept


@pytest.mark.parametrize("bad", ["4GB", "-1", "abc", "", "1.2.3", "2 Gi", "Gi"])
def test_bad_quantity_is_refused_naming_the_field(bad):
    message = refused({"roles": {"ps": {"resources": {"memory": bad}}}})
    assert message.startswith("roles.ps.resources.memory: must be a Kubernetes quantity such as 500m")
    assert repr(bad) in message


def test_negative_replicas_are_refused_in_flag_spelling():
    assert (
        refused({"replicas": {"workers": -1}})
        == "--workers (replicas.workers): Input should be greater than or equal to 0 (got -1)"
    )


def test_two_chiefs_are_refused():
    assert refused({"replicas": {"chief": 2}}) == "replicas.chief: Input should be less than or equal to 1 (got 2)"


@pytest.mark.parametrize("name", ["Study", "1study", "study_1", "study-", "a" * 52])
def test_bad_name_is_refused(name):
    message = refused({"name": name})
    assert message.startswith("name: must be lowercase letters, digits and '-', start with a letter")
    assert "at most 51 characters" in message


def test_ps_without_workers_is_refused_with_the_fix():
    assert "add --workers 1 or set --ps 0" in refused({"replicas": {"workers": 0, "ps": 2}})


@pytest.mark.parametrize(
    ("toleration", "problem"),
    [
        ({"key": "gpu", "operator": "Exists", "value": "yes"}, "takes no value"),
        ({"operator": "Equal", "value": "x"}, "without a key must use operator Exists"),
        ({"key": "gpu", "effect": "Sometimes"}, "Input should be 'NoSchedule'"),
    ],
)
def test_inconsistent_tolerations_are_refused(toleration, problem):
    message = refused({"roles": {"worker": {"tolerations": [toleration]}}})
    assert message.startswith("roles.worker.tolerations.0") and problem in message


def test_tf_config_in_env_is_refused_because_each_task_gets_its_own():
    assert "TF_CONFIG is built for each task" in refused({"env": {"TF_CONFIG": "{}"}})


def test_env_names_kubernetes_refuses_are_refused():
    assert "'A B' is not an environment variable name" in refused({"env": {"A B": "1"}})


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("mode", "kubeflow", "'tfjob' or 'native'"),
        ("image_pull_policy", "Sometimes", "'Always', 'IfNotPresent' or 'Never'"),
    ],
)
def test_enumerated_fields_list_what_is_allowed(field, value, allowed):
    assert allowed in refused({field: value})


def test_policy_and_scheduling_bounds():
    assert refused({"policy": {"restart_policy": "Always"}}).startswith("policy.restart_policy:")
    assert refused({"policy": {"backoff_limit": -1}}).startswith("policy.backoff_limit:")
    assert refused({"security": {"run_as_user": 0}}).startswith("security.run_as_user:")


def test_an_existing_service_account_must_be_named():
    assert (
        refused({"service_account": {"create": False}})
        == "service_account: with create: false, name the existing ServiceAccount the pods use"
    )


def test_unknown_field_names_the_closest_or_points_at_the_values_listing():
    assert (
        refused({"roles": {"worker": {"resource": {}}}})
        == "roles.worker.resource: unknown field; did you mean `resources`?"
    )
    assert (
        refused({"roles": {"worker": {"zzz": {}}}})
        == "roles.worker.zzz: unknown field; check its spelling against `pmlctl render --values`"
    )


def test_file_and_flags_merge_with_flags_winning(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: study\nmode: native\nreplicas: {workers: 2, ps: 1}\n"
        "roles:\n  worker:\n    resources: {cpu: 2, memory: 4Gi, gpu: 1}\n"
        "    node_selector: {pool: gpu}\n"
        "    tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]\n"
        "credentials: {secret: s3-creds}\n"
        "scheduling: {queue: research}\n"
    )
    spec = load(job, {"replicas": {"workers": 6}, "trainer": {"epochs": 9}})
    assert (spec.replicas.workers, spec.replicas.ps) == (6, 1)
    assert spec.trainer.epochs == 9 and spec.mode == "native"
    worker = spec.roles.worker
    assert (worker.resources.cpu, worker.resources.memory, worker.resources.gpu) == ("2", "4Gi", 1)
    assert worker.node_selector == {"pool": "gpu"}
    assert worker.tolerations[0].key == "nvidia.com/gpu" and worker.tolerations[0].operator == "Exists"
    assert spec.credentials.secret == "s3-creds"
    assert spec.credentials.env == {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    }
    assert spec.scheduling.queue == "research"


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("roles: {chief: {resources: {cpu: lots}}}\n")
    assert refused({}, job).startswith(f"{job}: roles.chief.resources.cpu: must be a Kubernetes quantity")


def test_a_map_key_with_a_newline_is_quoted_and_the_refusal_stays_one_line():
    """Found by hypothesis (test_properties): the key was printed as it was, and broke the line in two."""
    with pytest.raises(BadInput) as refused:
        load(None, {"roles": {"worker": {"node_selector": {"\n": None}}}})
    assert str(refused.value) == 'roles.worker.node_selector."\\n": Input should be a valid string'
