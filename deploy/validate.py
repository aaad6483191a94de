"""Check rendered Kubernetes objects before anything reaches a cluster.

Three layers, each raising `BadInput` with one line that names the object, the field and the fix:
- built-in kinds against the Kubernetes schemas of the target version (kubernetes-validate,
  strict, so unknown fields fail);
- the TFJob against its CRD's openAPIV3Schema, made strict the way the API server prunes;
- what the CRD leaves to the operator's webhook, and what our chart promises (a container named
  tensorflow, credentials only from Secrets, a TF_CONFIG the trainer accepts).

kubernetes-validate and jsonschema come with the `validate` extra; they are imported here only.
"""

from __future__ import annotations

import functools
import pathlib
import re
from collections.abc import Iterable
from typing import Any

import yaml

from deploy.spec import DNS_1035
from pml_trainer import tf_config
from pml_trainer.errors import BadInput

KUBE_VERSION = "1.30.0"
INSTALL_HINT = "pip install 'parallel-ml[validate]'"
TFJOB_API = ("kubeflow.org/v1", "TFJob")
REPLICA_TYPES = ("Chief", "Worker", "PS", "Evaluator")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
CLEAN_POD_POLICIES = ("All", "Running", "None")
# Names under which a literal value would be a credential in plain sight.
SECRET_LIKE = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIALS_JSON", re.I)


def check(objects: Iterable[dict[str, Any]], crd: pathlib.Path | None, kube_version: str = KUBE_VERSION) -> None:
    """Raise BadInput for the first problem in `objects`; with no `crd`, a TFJob skips its schema."""
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) == TFJOB_API:
            if crd is not None:
                _against(tfjob_validator(crd), obj, f"the TFJob CRD in {crd}")
            _tfjob_rules(obj)
        else:
            _against(
                _kubernetes_validator(obj["apiVersion"], obj["kind"], kube_version), obj, f"Kubernetes {kube_version}"
            )
        _object_rules(obj)


def _schema_libraries():
    try:
        import jsonschema
        import kubernetes_validate.utils
    except ImportError:
        raise BadInput(
            f"validation needs kubernetes-validate and jsonschema: {INSTALL_HINT}, or pass --no-validate"
        ) from None
    return jsonschema, kubernetes_validate.utils


@functools.cache
def _kubernetes_validator(api_version: str, kind: str, kube_version: str):
    """The validator kubernetes-validate would build for this kind, built once per kind."""
    jsonschema, kv = _schema_libraries()
    from referencing import Registry, Resource

    wanted = _minor(kube_version)
    known = [v for v in kv.all_versions() if _minor(v) <= wanted]
    if not known or wanted > _minor(kv.latest_version()):
        raise BadInput(
            f"--kube-version {kube_version}: not known to kubernetes-validate; "
            f"use {kv.all_versions()[0]} to {kv.latest_version()}"
        )
    folder = f"kubernetes-json-schema/v{known[-1]}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv.schema_contents(f"{folder}/{kind.lower()}-{group}.json", kube_version)
    except FileNotFoundError:
        raise BadInput(
            f"{kind} {api_version}: no schema in Kubernetes {kube_version}; "
            "check the apiVersion against the target version"
        ) from None
    registry = _definitions(folder, kube_version) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _definitions(folder: str, kube_version: str):
    """The shared definitions every kind refers to: 1.3 MB of JSON, read once."""
    _, kv = _schema_libraries()
    from referencing import Resource

    return Resource.from_contents(kv.schema_contents(f"{folder}/_definitions.json", kube_version))


def _minor(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.removeprefix("v").split(".")[:2])
    except ValueError:
        raise BadInput(f"--kube-version {version}: not a version; write it as 1.30 or 1.30.0") from None


@functools.lru_cache(maxsize=4)
def tfjob_validator(crd: pathlib.Path):
    """A strict JSON Schema validator from the TFJob CRD file."""
    jsonschema, _ = _schema_libraries()
    try:
        doc = yaml.load(crd.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        version = next(v for v in doc["spec"]["versions"] if v["name"] == "v1")
        schema = version["schema"]["openAPIV3Schema"]
    except OSError as err:
        raise BadInput(f"--crd {crd}: {err.strerror}; give the path of kubeflow.org_tfjobs.yaml") from None
    except (yaml.YAMLError, KeyError, TypeError, StopIteration):
        raise BadInput(
            f"--crd {crd}: not the TFJob CustomResourceDefinition with a v1 schema; "
            "give kubeflow.org_tfjobs.yaml of the Kubeflow Training Operator"
        ) from None
    return jsonschema.Draft202012Validator(strict_schema(schema))


def strict_schema(node: Any) -> Any:
    """An openAPIV3Schema as plain JSON Schema, where unknown fields fail.

    The API server prunes fields a structural schema does not list, so a typo in a TFJob would be
    silently dropped there; here it is an error instead.
    """
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: strict_schema(value)
        for key, value in node.items()
        if not key.startswith("x-kubernetes-") and key != "nullable"
    }
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _against(validator, obj: dict[str, Any], source: str) -> None:
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise BadInput(f"{_name(obj)}: {_path(error.absolute_path)}: {_problem(error)} (per {source})")


def _problem(error) -> str:
    """What is wrong and how to fix it, from a jsonschema error."""
    if error.validator == "additionalProperties":
        return f"{error.message}; remove the field or fix its spelling"
    if error.validator == "required":
        return f"{error.message}; add it"
    if error.validator == "enum":
        return f"{error.instance!r} is not allowed; use one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        wanted = " or ".join(t for t in types if t != "null")
        return f"{error.instance!r} is not of type {wanted}; write a value of type {wanted}"
    return f"{error.message}; fix this value"


def _tfjob_rules(job: dict[str, Any]) -> None:
    """What the Training Operator's webhook checks, which the CRD schema leaves open."""
    spec = job.get("spec") or {}
    run_policy = spec.get("runPolicy") or {}
    clean = run_policy.get("cleanPodPolicy")
    if clean is not None and clean not in CLEAN_POD_POLICIES:
        _fail(
            job,
            "spec.runPolicy.cleanPodPolicy",
            f"{clean!r} is not a policy; use Running (the default leaves ps running), All or None",
        )
    replica_specs = spec.get("tfReplicaSpecs") or {}
    if not replica_specs:
        _fail(job, "spec.tfReplicaSpecs", "no replicas; add a Chief")
    for kind, replica in replica_specs.items():
        where = f"spec.tfReplicaSpecs.{kind}"
        if kind not in REPLICA_TYPES:
            _fail(
                job,
                where,
                f"unknown replica type; use {', '.join(REPLICA_TYPES)} "
                "(Chief, never Master: ParameterServerStrategy needs a chief)",
            )
        policy = replica.get("restartPolicy")
        if policy is not None and policy not in RESTART_POLICIES:
            _fail(job, f"{where}.restartPolicy", f"{policy!r} is not a policy; use {', '.join(RESTART_POLICIES)}")
        count = replica.get("replicas", 1)
        if not isinstance(count, int) or count < 0:
            _fail(job, f"{where}.replicas", f"{count!r} is not a replica count; use 0 or more")
        if kind == "Chief" and count > 1:
            _fail(job, f"{where}.replicas", f"{count} chiefs; a job has exactly one")
        _pod_rules(job, f"{where}.template.spec", (replica.get("template") or {}).get("spec") or {})


def _object_rules(obj: dict[str, Any]) -> None:
    name = obj.get("metadata", {}).get("name", "")
    if obj["kind"] in ("TFJob", "Service", "Job") and (not DNS_1035.match(name) or len(name) > 63):
        _fail(
            obj,
            "metadata.name",
            "must be a DNS-1035 label: lowercase letters, digits and '-', starting "
            "with a letter, at most 63 characters; pick another job name",
        )
    if obj["kind"] == "Job":
        _pod_rules(obj, "spec.template.spec", obj["spec"]["template"]["spec"])


def _pod_rules(obj: dict[str, Any], where: str, pod: dict[str, Any]) -> None:
    containers = pod.get("containers") or []
    if not any(c.get("name") == "tensorflow" for c in containers):
        _fail(
            obj,
            f"{where}.containers",
            "no container named tensorflow; the operator injects TF_CONFIG "
            "only into that one, so rename the training container",
        )
    for i, container in enumerate(containers):
        for j, env in enumerate(container.get("env") or []):
            at = f"{where}.containers[{i}].env[{j}]"
            if "value" in env and SECRET_LIKE.search(env["name"]):
                _fail(
                    obj,
                    at,
                    f"{env['name']} looks like a credential given as a literal value; put it in a "
                    "Secret and reference it with credentials.secret (or use Workload Identity)",
                )
            if env["name"] == "TF_CONFIG":
                _tf_config_rule(obj, at, env.get("value", ""))


def _tf_config_rule(obj: dict[str, Any], where: str, raw: str) -> None:
    try:
        tf_config.parse(raw)
    except BadInput as err:
        _fail(obj, where, f"the trainer would refuse this {err}")


def _fail(obj: dict[str, Any], where: str, problem: str) -> None:
    raise BadInput(f"{_name(obj)}: {where}: {problem}")


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def _path(parts: Iterable[Any]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return text or "(top level)"
