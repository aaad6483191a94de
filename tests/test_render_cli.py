"""`pmlctl render` as a user runs it: flags and job files in, a checked manifest or values out,
and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import pmlctl, shared_dir

from deploy import chart
from deploy.render import manifest, objects
from deploy.spec import JobSpec

CRD = str(shared_dir() / "schemas" / "kubeflow.org_tfjobs.yaml")


def ok(*args: str, cwd) -> subprocess.CompletedProcess:
    result = pmlctl("render", *args, cwd=cwd, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def error_line(*args: str, cwd) -> str:
    result = pmlctl("render", *args, cwd=cwd, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line


def test_study_shape_prints_what_helm_renders_for_the_same_spec(tmp_path):
    result = ok(
        "--name", "study", "-n", "ml", "--workers", "6", "--ps", "3", "--epochs", "4", "--crd", CRD, cwd=tmp_path
    )
    spec = JobSpec(name="study", namespace="ml", replicas={"workers": 6, "ps": 3}, trainer={"epochs": 4})
    assert result.stdout == manifest(spec)
    tfjob = next(o for o in objects(result.stdout) if o["kind"] == "TFJob")
    assert {k: r["replicas"] for k, r in tfjob["spec"]["tfReplicaSpecs"].items()} == {"Chief": 1, "Worker": 6, "PS": 3}
    assert "--epochs" in tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["args"]
    # The model dir note is the only one: the TFJob was checked against the CRD.
    assert [line.split(":")[0] for line in result.stderr.splitlines()] == ["note"]
    assert "model dir runs/study is on the pod's own disk" in result.stderr


def test_job_file_with_flags_on_top_and_output_file(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: study\nnamespace: ml\nmode: native\nreplicas: {workers: 2, ps: 1}\n"
        "trainer: {model_dir: 'gs://bucket/study', epochs: 2}\n"
        "roles: {worker: {resources: {gpu: 1}}}\n"
    )
    out = tmp_path / "out.yaml"
    result = ok("-f", str(job), "--workers", "4", "--evaluator", "-o", str(out), cwd=tmp_path)
    assert result.stdout == "" and result.stderr == f"wrote {out}\n"
    jobs = {o["metadata"]["name"]: o for o in objects(out.read_text()) if o["kind"] == "Job"}
    assert sorted(jobs) == sorted(
        ["study-chief-0", "study-evaluator-0", "study-ps-0"] + [f"study-worker-{i}" for i in range(4)]
    )
    worker = jobs["study-worker-3"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert worker["args"][worker["args"].index("--model-dir") + 1] == "gs://bucket/study"


def test_values_are_printed_for_helm_install_and_load_back_as_the_job(tmp_path):
    result = ok(
        "--values", "--name", "study", "-n", "ml", "--mode", "native", "--ps", "2", "--batch-size", "64", cwd=tmp_path
    )
    assert result.stdout.startswith("# helm install study ")
    printed = yaml.safe_load(result.stdout)
    spec = JobSpec(name="study", namespace="ml", mode="native", replicas={"ps": 2}, trainer={"batch_size": 64})
    assert printed == {**chart.values(spec), "trainer": spec.trainer.model_dump(mode="json")}
    assert JobSpec.model_validate({**printed, "namespace": "ml"}) == spec


def test_without_a_crd_the_tfjob_is_still_checked_and_the_user_told(tmp_path):
    result = ok("--name", "study", cwd=tmp_path)
    assert "note: the TFJob was not checked against its CRD schema; pass --crd" in result.stderr
    assert any(o["kind"] == "TFJob" for o in objects(result.stdout))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--workers", "-1"],
            "error: --workers (replicas.workers): Input should be greater than or equal to 0 (got -1)",
        ),
        (["--name", "Study_1"], "error: name: must be lowercase letters, digits and '-', start with a letter"),
        (["--mode", "kubeflow"], "error: mode: Input should be 'tfjob' or 'native' (got 'kubeflow')"),
        (["--epochs", "0"], "error: --epochs (trainer.epochs): Input should be greater than or equal to 1 (got 0)"),
        (["--crd", "/nowhere/crd.yaml"], "error: --crd /nowhere/crd.yaml: No such file or directory; give the path"),
        (["--kube-version", "1.2"], "error: --kube-version 1.2: not known to kubernetes-validate; use 1.25.0 to"),
        (["--kube-version", "1.99"], "error: --kube-version 1.99: not known to kubernetes-validate; use 1.25.0 to"),
        (["--kube-version", "latest"], "error: --kube-version latest: not a version; write it as 1.30"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, args, message):
    assert error_line(*args, cwd=tmp_path).startswith(message)


def test_bad_quantity_in_a_job_file_is_one_error_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("roles: {worker: {resources: {memory: 4GB}}}\n")
    assert error_line("-f", str(job), cwd=tmp_path) == (
        f"error: {job}: roles.worker.resources.memory: must be a Kubernetes quantity such as 500m, 2, 1.5, "
        "4Gi or 512Mi (got '4GB')"
    )


def test_two_chiefs_in_a_job_file_are_refused(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("replicas: {chief: 2}\n")
    assert error_line("-f", str(job), cwd=tmp_path).startswith(
        f"error: {job}: replicas.chief: Input should be less than or equal to 1"
    )


def run_without_validation_libraries(*args: str, cwd) -> subprocess.CompletedProcess:
    """pmlctl in an install without the `validate` extra: the imports fail as they would there."""
    code = (
        "import sys; sys.modules['kubernetes_validate'] = None; sys.modules['jsonschema'] = None\n"
        f"from deploy.cli import main; sys.argv = ['pmlctl', 'render', *{list(args)!r}]; main()"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_missing_validate_extra_says_how_to_install_it(tmp_path):
    result = run_without_validation_libraries("--name", "study", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "error: validation needs kubernetes-validate and jsonschema: "
        "pip install 'parallel-ml[validate]', or pass --no-validate\n"
    )


def test_no_validate_renders_without_the_extra_and_says_so(tmp_path):
    result = run_without_validation_libraries("--name", "study", "--no-validate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "note: not validated (--no-validate)" in result.stderr
    assert [o["kind"] for o in objects(result.stdout)] == ["NetworkPolicy", "ServiceAccount", "TFJob"]


def test_the_cli_module_loads_no_heavy_library(tmp_path):
    code = (
        "import sys, deploy.cli\n"
        "print(sorted(m for m in ('tensorflow', 'helm_python', 'kubernetes_validate', 'jsonschema')"
        " if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("image", "policy", "warned"),
    [
        ("europe-docker.pkg.dev/p/r/parallel-ml:v3", None, True),  # IfNotPresent by default
        ("localhost:5000/parallel-ml:latest", "IfNotPresent", True),
        ("europe-docker.pkg.dev/p/r/parallel-ml@sha256:" + "a" * 64, None, False),  # one image for ever
        ("europe-docker.pkg.dev/p/r/parallel-ml@sha512:" + "a" * 128, None, False),
        ("myorg/parallel-ml:v3", None, True),  # Docker Hub: docker.io/myorg/parallel-ml
        ("europe-docker.pkg.dev/p/r/parallel-ml:v3", "Always", False),
        ("parallel-ml:latest", None, False),  # a bare name: what kind nodes are loaded with
    ],
)
def test_a_registry_tag_under_if_not_present_is_pointed_out(tmp_path, image, policy, warned):
    args = ["--image", image, "--no-validate"]
    if policy:
        (tmp_path / "job.yaml").write_text(f"image_pull_policy: {policy}\n")
        args += ["-f", "job.yaml"]
    result = ok(*args, cwd=tmp_path)
    assert ("is named by tag with imagePullPolicy IfNotPresent" in result.stderr) == warned, result.stderr
