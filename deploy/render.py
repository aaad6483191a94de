"""`pmlctl render`: a JobSpec through the Helm chart, with Helm's own engine, then validated.

The manifest is what `helm template` prints for the same values: it comes from a client-side
dry-run install with in-memory release storage, so no helm binary and no cluster are involved.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from deploy import chart
from deploy.spec import JobSpec
from pml_trainer.errors import BadInput

# Helm wants a kubeconfig even for a client-side dry run; this one points nowhere.
NO_CLUSTER = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"
# The chart's writable volumes; everything else in a pod is read-only.
SCRATCH = ("/scratch/", "/tmp/")


@dataclass
class Rendered:
    manifest: str
    notes: list[str] = field(default_factory=list)


def render(
    spec: JobSpec, *, validate: bool = True, crd: pathlib.Path | None = None, kube_version: str | None = None
) -> Rendered:
    """The job's Kubernetes manifest, checked unless `validate` is false."""
    notes = _model_dir_notes(spec.model_dir)
    result = Rendered(manifest(spec))
    if not validate:
        result.notes.append("not validated (--no-validate)")
    else:
        from deploy import validate as checks

        checks.check(objects(result.manifest), crd, kube_version or checks.KUBE_VERSION)
        if crd is None and spec.mode == "tfjob":
            result.notes.append(
                "the TFJob was not checked against its CRD schema; pass --crd "
                "kubeflow.org_tfjobs.yaml (Kubeflow Training Operator) or set PML_TFJOB_CRD"
            )
    result.notes += notes
    result.notes += _image_notes(spec)
    return result


def _image_notes(spec: JobSpec) -> list[str]:
    from deploy.k8s.shipping import in_a_registry_by_tag

    if spec.image_pull_policy != "IfNotPresent" or not in_a_registry_by_tag(spec.image):
        return []
    # `pmlctl submit` names such an image by its digest (deploy/k8s/shipping.py, pinned); a rendered
    # manifest cannot look it up, and a tag under IfNotPresent runs whatever a node has (issue 26).
    return [
        f"image {spec.image} is named by tag with imagePullPolicy IfNotPresent: a node that holds an older "
        "image of that tag runs it, so one job can run two versions; `pmlctl submit` names it by digest "
        "(but on kind, whose nodes are loaded), and for kubectl apply give NAME@sha256:... or "
        "image_pull_policy: Always"
    ]


def _model_dir_notes(model_dir: str) -> list[str]:
    if "://" in model_dir:
        return []
    if model_dir.startswith("/") and not model_dir.startswith(SCRATCH):
        raise BadInput(
            f"--model-dir {model_dir}: the pods' root filesystem is read-only; use gs://BUCKET/PATH, "
            "s3://BUCKET/PATH, or a path under /scratch"
        )
    return [
        f"model dir {model_dir} is on the pod's own disk and goes with the pod; "
        "use --model-dir gs://BUCKET/PATH or s3://BUCKET/PATH to keep the model"
    ]


def manifest(spec: JobSpec) -> str:
    import helm_python

    chart_path = chart.chart_dir()
    if not (chart_path / "Chart.yaml").is_file():
        raise BadInput(
            f"no Helm chart at {chart_path}; run from a parallel-ml checkout or set "
            f"{chart.CHART_ENV} to the charts/parallel-ml folder"
        )
    with helm_python.Config(storage_driver="memory", namespace=spec.namespace, kubeconfig_content=NO_CLUSTER) as config:
        try:
            release = config.install(
                str(chart_path), spec.name, chart.values(spec), namespace=spec.namespace, dry_run="client"
            )
        except helm_python.HelmError as err:
            raise BadInput(f"chart {chart_path}: {' '.join(str(err).split())}") from None
    return release["manifest"]


def objects(text: str) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(text, Loader=loader) if doc]


def values_yaml(spec: JobSpec) -> str:
    """The values file for `spec`, for `helm install -f` or as a job file to edit: every field a job
    file can set, trainer flags at their defaults included. A name nobody gave is left out (the
    chart takes the release's), so the file names no random job."""
    doc = chart.values(spec)
    doc["trainer"] = spec.trainer.model_dump(mode="json")
    named = "name" in spec.model_fields_set
    if not named:
        del doc["name"]
        doc["trainer"].pop("model_dir")  # derived from the random name: runs/<name>
    release = spec.name if named else "NAME"
    return f"# helm install {release} {chart.chart_dir()} -n {spec.namespace} -f THIS_FILE\n" + yaml.safe_dump(
        doc, sort_keys=False
    )
