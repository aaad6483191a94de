"""docs/kubernetes.md's kind and GKE sections are the recipe: their commands, job files and Terraform
outputs must be what deploy/kind, deploy/gke and the CLI have, word for word.

The scripts run here against stand-ins for docker, kind, kubectl, gcloud, terraform and pmlctl
that log their arguments, so what they would do on a workstation is checked without a cluster.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT, shared_dir
from typer.testing import CliRunner

from deploy import render, spec
from deploy.cli import app

README = (ROOT / "docs" / "kubernetes.md").read_text()
GKE = ROOT / "deploy" / "gke"
KIND = ROOT / "deploy" / "kind"


def section(heading: str) -> str:
    """The page's text under `heading` (## or ###), up to the next heading of its level or above."""
    level = heading.split(" ")[0]
    start = README.index(f"\n{heading}\n")
    stop = re.compile(rf"^#{{1,{len(level)}}} ", re.M).search(README, start + len(heading) + 2)
    return README[start : stop.start() if stop else len(README)]


RECIPE = README  # the whole page
KIND_STEPS = section("## kind, step by step")
GKE_STEPS = section("## GKE, step by step")


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def command_lines(text: str) -> list[str]:
    """The commands of the bash blocks: continuation lines joined, comments dropped."""
    lines = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def terraform_blocks(kind: str) -> dict[str, str]:
    """NAME -> body of each `KIND "NAME" {...}` (variable, output) or `resource "TYPE" "NAME"` in deploy/gke."""
    found = {}
    for path in sorted(GKE.glob("*.tf")):
        text = path.read_text()
        for m in re.finditer(rf'^{kind} ((?:"[^"]+" )+)\{{', text, re.M):
            depth, i = 1, m.end()
            while depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            found[" ".join(re.findall(r'"([^"]+)"', m.group(1)))] = text[m.end() : i - 1]
    return found


def default(variable: str) -> str:
    return re.search(r'default\s*=\s*"([^"]*)"', terraform_blocks("variable")[variable]).group(1)


PROJECT = "my-project"  # for the README's placeholder MY_PROJECT, which is no valid bucket name


def readme_job(tmp_path: pathlib.Path) -> tuple[pathlib.Path, spec.JobSpec]:
    (text,) = blocks(GKE_STEPS, "yaml")
    path = tmp_path / "gke-job.yaml"
    path.write_text(text.replace("MY_PROJECT", PROJECT))
    return path, spec.load(path, {})


# GKE: one ServiceAccount that Terraform binds and makes, named by every job


def test_the_readme_gke_job_runs_as_the_service_account_terraform_binds(tmp_path):
    _, job = readme_job(tmp_path)
    namespace, name = default("namespace"), default("kubernetes_service_account")
    assert (job.namespace, job.service_account.name) == (namespace, name)
    assert job.service_account.create is False, "a job that creates the shared ServiceAccount collides with the next"
    binding = terraform_blocks("resource")["google_service_account_iam_member workload_identity"]
    assert "svc.id.goog[${var.namespace}/${var.kubernetes_service_account}]" in binding
    # The chart makes no ServiceAccount of its own, and every pod runs as the bound one.
    objects = render.objects(render.manifest(job))
    assert "ServiceAccount" not in {o["kind"] for o in objects}
    accounts = {o["serviceAccountName"] for o in _walk(objects) if "serviceAccountName" in o}
    assert accounts == {name}
    assert {o["metadata"].get("namespace") for o in objects} == {namespace}


def test_the_readme_gke_job_and_commands_use_what_terraform_makes(tmp_path):
    _, job = readme_job(tmp_path)
    apply = next(shlex.split(line) for line in command_lines(GKE_STEPS) if line.startswith("terraform apply"))
    given = dict(apply[i + 1].split("=", 1) for i, arg in enumerate(apply) if arg == "-var")
    given = {k: v.replace("MY_PROJECT", PROJECT) for k, v in given.items()}
    settings = {v: given.get(v) or default(v) for v in ("project", "region", "zone", "cluster", "repository")}
    outputs = terraform_blocks("output")

    def output(name: str) -> str:
        value = re.search(r'value\s*=\s*"(.*)"', outputs[name]).group(1)
        value = value.replace("${google_container_cluster.pml.name}", "${var.cluster}")
        value = value.replace("${google_artifact_registry_repository.images.repository_id}", "${var.repository}")
        return re.sub(r"\$\{var\.(\w+)\}", lambda m: settings[m.group(1)], value)

    assert job.image == output("image")
    assert job.model_dir.startswith(f"gs://{given['bucket']}/")
    context = output("context").replace(PROJECT, "MY_PROJECT")
    pmlctl = [shlex.split(line) for line in command_lines(GKE_STEPS) if line.startswith("pmlctl")]
    assert pmlctl and all(c[c.index("--context") + 1] == context for c in pmlctl)


def _walk(node):
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            yield from _walk(item)


def terraform_template(path: pathlib.Path, variables: dict[str, str], tmp_path: pathlib.Path) -> str:
    """templatefile(), as Terraform evaluates it (an empty module: no provider, no network)."""
    folder = tmp_path / "console"
    folder.mkdir(exist_ok=True)
    args = ", ".join(f'{k} = "{v}"' for k, v in variables.items())
    expression = f'jsonencode(templatefile("{path}", {{{args}}}))'
    result = subprocess.run(
        ["terraform", "console"],
        input=expression,
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(yaml.safe_load(result.stdout))  # the console quotes the JSON string


@pytest.mark.skipif(
    shutil.which("terraform") is None,
    reason="terraform is not installed: neither Debian nor PyPI ships it (developer.hashicorp.com/terraform/install)",
)
@pytest.mark.parametrize("namespace", ["default", "ml"])
def test_terraform_outputs_the_service_account_it_binds(tmp_path, namespace):
    output = terraform_blocks("output")["service_account_manifest"]
    template = re.search(r'templatefile\("\$\{path\.module\}/([^"]+)"', output).group(1)
    assert re.search(r"namespace\s*=\s*var\.namespace", output)
    assert re.search(r"name\s*=\s*var\.kubernetes_service_account", output)
    assert re.search(r"gcp_service_account\s*=\s*google_service_account\.trainer\.email", output)
    text = terraform_template(
        GKE / template,
        {"namespace": namespace, "name": "pml-trainer", "gcp_service_account": "pml-trainer@p.iam.gserviceaccount.com"},
        tmp_path,
    )
    docs = [d for d in yaml.safe_load_all(text) if d]
    account = docs[-1]
    assert account["kind"] == "ServiceAccount"
    assert account["metadata"]["name"] == "pml-trainer" and account["metadata"]["namespace"] == namespace
    assert account["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "pml-trainer@p.iam.gserviceaccount.com"
    }
    assert [d["kind"] for d in docs[:-1]] == ([] if namespace == "default" else ["Namespace"])
    # The README applies exactly this output before the first job.
    assert "terraform output -raw service_account_manifest | kubectl apply -f -" in command_lines(GKE_STEPS)


@pytest.fixture
def kube(tmp_path, monkeypatch):
    pytest.importorskip("kubernetes")
    from k8s_fake import FakeKube

    from deploy.k8s import target

    fake = FakeKube(copy.deepcopy(yaml.safe_load((shared_dir() / "schemas" / "kubeflow.org_tfjobs.yaml").read_text())))
    fake.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("PML_HOME", str(tmp_path / "pml-home"))
    monkeypatch.setattr(target, "POLL_SECONDS", 0.01)
    yield fake
    fake.close()


def test_two_gke_jobs_share_the_service_account_and_delete_leaves_it(kube, tmp_path):
    path, job = readme_job(tmp_path)
    kube.put("serviceaccounts", {"metadata": {"name": job.service_account.name}}, job.namespace)
    for name in ("study", "study2"):
        result = CliRunner().invoke(app, ["submit", "-t", "k8s", "-f", str(path), "--name", name])
        assert result.exit_code == 0, result.output
    assert not kube.calls("POST", f"/api/v1/namespaces/{job.namespace}/serviceaccounts")
    result = CliRunner().invoke(app, ["delete", "study", "-t", "k8s"])
    assert result.exit_code == 0, result.output
    assert list(kube.objects("serviceaccounts", job.namespace)) == [job.service_account.name]


# GKE: the NetworkPolicy is enforced


def test_gke_cluster_enforces_network_policy():
    cluster = terraform_blocks("resource")["google_container_cluster pml"]
    dataplane_v2 = re.search(r'^\s*datapath_provider\s*=\s*"ADVANCED_DATAPATH"', cluster, re.M)
    calico = re.search(r"network_policy\s*\{[^}]*enabled\s*=\s*true", cluster)
    assert dataplane_v2 or calico, "GKE accepts a NetworkPolicy without enforcing it"


# GKE: the image is built for the nodes


def fake_bin(folder: pathlib.Path, scripts: dict[str, str]) -> dict[str, str]:
    """Commands that log `name args` to folder/calls and then run their script; the PATH to use."""
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> "{folder}/calls"\n{body}\n')
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:/usr/bin:/bin"}


def calls(folder: pathlib.Path) -> list[str]:
    path = folder / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_push_image_builds_for_the_node_platform(tmp_path):
    tools = tmp_path / "bin"
    env = fake_bin(
        tools,
        {
            "terraform": 'case "$*" in "output -raw image") echo europe-west4-docker.pkg.dev/p/pml/parallel-ml:latest;;'
            ' "output -raw image_platform") echo linux/amd64;; *) exit 1;; esac',
            "gcloud": "",
            "docker": "",
        },
    )
    result = subprocess.run(["bash", str(GKE / "push-image.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    build = [c for c in calls(tools) if c.startswith("docker") and " build " in f" {c} "]
    assert build == [
        "docker buildx build --platform linux/amd64 --tag europe-west4-docker.pkg.dev/p/pml/parallel-ml:latest"
        " --push ../.."
    ], calls(tools)
    assert default("image_platform") == "linux/amd64"
    arm = [v for v in ("worker_machine_type", "ps_machine_type") if re.match(r"(t2a|c4a|n4a)-", default(v))]
    assert not arm, "the node pools are amd64 machines"


# kind: the image loads into the nodes whatever Docker's image store


def cluster_tools(folder: pathlib.Path, done: bool, docker_has_platform: bool) -> dict[str, str]:
    check = "" if done else 'case "$*" in *" get "*|*"--timeout 1s"*|"image inspect parallel-ml:latest") exit 1;; esac'
    save_help = "echo '      --platform string   Save only the given platform variant'" if docker_has_platform else ":"
    return fake_bin(
        folder,
        {
            "kind": ("echo pml\n" if done else "") + check,
            "kubectl": check,
            "docker": f'echo "BUILDX_NO_DEFAULT_ATTESTATIONS=$BUILDX_NO_DEFAULT_ATTESTATIONS" >> "{folder}/calls"\n'
            f'case "$*" in "image inspect --format"*) echo linux/arm64;; "image save --help") {save_help};; esac\n'
            + check,
        },
    )


@pytest.mark.parametrize("done", [False, True])
def test_cluster_up_loads_one_platform_without_attestations(tmp_path, monkeypatch, done):
    tools = tmp_path / "bin"
    for key, value in cluster_tools(tools, done, docker_has_platform=True).items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["cluster", "up"])
    assert result.exit_code == 0, result.output
    log = calls(tools)
    build = [i for i, c in enumerate(log) if c.startswith("docker build --tag parallel-ml:latest")]
    assert len(build) == (0 if done else 1)
    if build:
        assert log[build[0] + 1] == "BUILDX_NO_DEFAULT_ATTESTATIONS=1", "the build adds a provenance attestation"
    (save,) = [c for c in log if c.startswith("docker image save --platform")]
    archive = save.split()[-2]
    assert save == f"docker image save --platform linux/arm64 --output {archive} parallel-ml:latest"
    assert f"kind load image-archive {archive} --name pml" in log
    assert not [c for c in log if "load docker-image" in c]
    assert not pathlib.Path(archive).exists(), "the archive is removed after loading"
    assert result.stdout.count("already there, skipped") == (4 if done else 0)


def test_cluster_up_with_a_docker_before_save_platform(tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    for key, value in cluster_tools(tools, True, docker_has_platform=False).items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["cluster", "up"])
    assert result.exit_code == 0, result.output
    (save,) = [c for c in calls(tools) if c.startswith("docker image save --output")]
    assert save.endswith(" parallel-ml:latest")


# kind: the README's job file and the cluster's MinIO


def test_the_kind_job_file_is_the_one_the_readme_submits_and_matches_minio():
    lines = command_lines(KIND_STEPS)
    submits = [shlex.split(line) for line in lines if line.startswith("pmlctl submit")]
    assert submits and all(s[s.index("-f") + 1] == "deploy/kind/e2e-job.yaml" for s in submits)
    job = spec.load(KIND / "e2e-job.yaml", {})
    assert job.replicas.evaluator == 1, "the e2e job has an evaluator, so that eval.jsonl can be checked"
    minio = {
        (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")): o
        for o in yaml.safe_load_all((KIND / "minio.yaml").read_text())
        if o
    }
    service = minio[("Service", "minio", "minio")]
    assert job.env["AWS_ENDPOINT_URL"] == f"http://minio.minio.svc:{service['spec']['ports'][0]['port']}"
    secret = minio[("Secret", job.credentials.secret, job.namespace)]
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    make_bucket = minio[("Job", "make-bucket", "minio")]["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    bucket = re.search(r"mc mb --ignore-existing local/(\S+)", make_bucket).group(1)
    model_dirs = [job.model_dir] + [s[s.index("--model-dir") + 1] for s in submits if "--model-dir" in s]
    assert all(d.startswith(f"s3://{bucket}/") for d in model_dirs), model_dirs


# every command of the recipe exists, with the options it is given


def test_every_pmlctl_command_of_the_recipe_parses():
    lines = [line for line in command_lines(RECIPE) if line.startswith("pmlctl ")]
    assert len(lines) >= 8, lines
    for line in lines:
        # --help stops before any option value is used, after every option name was recognised.
        result = CliRunner().invoke(app, [*shlex.split(line)[1:], "--help"])
        assert result.exit_code == 0, f"{line}: {result.output}"


def test_every_terraform_output_the_recipe_names_exists():
    outputs = set(terraform_blocks("output"))
    named = set(re.findall(r"terraform output (?:-raw )?([a-z_]+)", RECIPE))
    named |= set(re.findall(r"terraform output -raw ([a-z_]+)", (GKE / "push-image.sh").read_text()))
    named |= set(re.findall(r"`([a-z_]+)` output", RECIPE)) | set(re.findall(r"the `([a-z_]+)` output", RECIPE))
    assert {"service_account_manifest", "namespace", "kubernetes_service_account", "image"} <= named
    assert named <= outputs, named - outputs
    variables = set(re.findall(r"-var ([a-z_]+)=", RECIPE))
    assert variables <= set(terraform_blocks("variable")), variables


# deploy/kind/e2e.sh: what kind can show, checked by the script itself


def e2e_tools(folder: pathlib.Path, ps: str = "e2e-ps-0 Succeeded 0", objects: str | None = None) -> dict[str, str]:
    # A remote checkpoint is named ckpt-<incarnation>-<step> (trainer/checkpoints.py).
    objects = (
        objects
        if objects is not None
        else "[2025] 1KiB STANDARD checkpoints/ckpt-0a1b2c3d-1.index\\n[2025] 1KiB STANDARD eval.jsonl"
    )
    return fake_bin(
        folder,
        {
            "pmlctl": "",
            "kubectl": f'case "$*" in *"get pods"*) echo "{ps}";; *"mc ls"*) printf "{objects}\\n";;'
            ' *"mc cat"*) echo \'{"step": 1, "test_loss": 0.5}\';; esac',
        },
    )


def run_e2e(tools: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(KIND / "e2e.sh")],
        env={**env, "PMLCTL": str(tools / "pmlctl")},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_e2e_resubmits_the_finished_job_and_checks_ps_and_evaluation(tmp_path):
    tools = tmp_path / "bin"
    result = run_e2e(tools, e2e_tools(tools))
    assert result.returncode == 0, result.stdout + result.stderr
    steps = [c.split()[1] + (" --replace" if "--replace" in c else "") for c in calls(tools) if c.startswith("pmlctl")]
    assert steps == ["cluster", "submit --replace", "wait", "submit --replace", "wait", "delete", "cluster"]
    kubectl = [c for c in calls(tools) if c.startswith("kubectl")]
    assert any("get pods -l parallel-ml/job=e2e,parallel-ml/role=ps" in c for c in kubectl)
    assert any("mc cat local/pml/e2e/eval.jsonl" in c for c in kubectl)


@pytest.mark.parametrize(
    ("ps", "objects", "error"),
    [
        ("e2e-ps-0 Succeeded 1", None, "ps pod e2e-ps-0 was restarted 1 times"),
        ("e2e-ps-0 Failed 0", None, "ps pod e2e-ps-0 is Failed"),
        ("e2e-ps-0 Succeeded 0", "[2025] 1KiB STANDARD checkpoints/ckpt-1.index", "no eval.jsonl under s3://pml/e2e"),
        ("e2e-ps-0 Succeeded 0", "[2025] 1KiB STANDARD eval.jsonl", "no ckpt-N.index under s3://pml/e2e"),
    ],
)
def test_e2e_stops_at_what_kind_shows_wrong(tmp_path, ps, objects, error):
    tools = tmp_path / "bin"
    result = run_e2e(tools, e2e_tools(tools, ps, objects))
    assert result.returncode == 1 and f"e2e: {error}" in result.stderr, result.stdout + result.stderr
    assert not [c for c in calls(tools) if c.startswith("pmlctl delete")], "the cluster is left up for a look"


# Issue 26, item 10: deploy/gke works on a new project, kube-system has a node, and workers can go to Spot VMs.


def test_terraform_enables_every_api_its_resources_need_on_a_new_project():
    (apis,) = re.findall(
        r"for_each = toset\(\[(.*?)\]\)", terraform_blocks("resource")["google_project_service apis"], re.S
    )
    enabled = set(re.findall(r'"([^"]+)"', apis))
    # google_service_account and IAM bindings: iam; Workload Identity tokens: iamcredentials;
    # data.google_project: cloudresourcemanager. None is on by default in a new project.
    assert {"iam.googleapis.com", "iamcredentials.googleapis.com", "cloudresourcemanager.googleapis.com"} <= enabled
    assert {"container.googleapis.com", "artifactregistry.googleapis.com"} <= enabled
    resources = terraform_blocks("resource")
    assert "google_project_service.apis" in resources["google_service_account trainer"]


def test_kube_system_has_a_node_before_any_job_scales_a_pool():
    pools = {k: v for k, v in terraform_blocks("resource").items() if k.startswith("google_container_node_pool ")}
    always = [name for name, body in pools.items() if re.search(r"^\s*node_count\s*=\s*[1-9]", body, re.M)]
    always += [name for name, body in pools.items() if re.search(r"min_node_count\s*=\s*[1-9]", body)]
    assert always == ["google_container_node_pool system"]
    assert "taint" not in pools["google_container_node_pool system"]  # kube-system tolerates no taint of ours


def test_the_spot_pool_takes_the_workers_of_the_documented_job_and_nothing_else():
    pool = terraform_blocks("resource")["google_container_node_pool spot_workers"]
    assert re.search(r"^\s*spot\s*=\s*true$", pool, re.M)
    assert re.search(r"count\s*=\s*var\.max_spot_worker_nodes > 0 \? 1 : 0", pool)
    taint = dict(re.findall(r'(key|value|effect)\s*=\s*"([^"]+)"', re.search(r"taint \{(.*?)\}", pool, re.S)[1]))
    assert taint == {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NO_SCHEDULE"}
    (snippet,) = blocks(section("## Workers on Spot VMs"), "yaml")
    job = spec.JobSpec.model_validate({"name": "study", "replicas": {"workers": 2, "ps": 1}, **yaml.safe_load(snippet)})
    (tfjob,) = [o for o in render.objects(render.manifest(job)) if o["kind"] == "TFJob"]
    templates = {t.lower(): r["template"]["spec"] for t, r in tfjob["spec"]["tfReplicaSpecs"].items()}
    worker, others = templates.pop("worker"), list(templates.values())
    assert others, "the chief and ps must be rendered too"
    # GKE labels Spot nodes cloud.google.com/gke-spot=true (cloud.google.com/kubernetes-engine/docs/how-to/spot-vms).
    assert worker["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    assert {"key": taint["key"], "operator": "Equal", "value": "true", "effect": "NoSchedule"} in worker["tolerations"]
    assert all(taint["key"] not in json.dumps(t) for t in others)
