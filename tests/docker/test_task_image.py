"""The task image (deploy/task_image.py), built by a real Docker daemon FROM the real trainer image:
nothing rebuilt for the same code, only the last layer for new code, the trainer image's pins held
against the requirements, the code at /workspace with the digest of its source; and pushed to a
real registry, from where a cluster's pods name it by digest."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request

import pytest
import yaml
from dockerd import CA_BUNDLE, docker, docker_env, run, trainer_image, wait_until  # noqa: F401 (fixtures)
from test_k8s import crd, kube  # noqa: F401 (fixtures)
from test_tasks import REGRESSION
from typer.testing import CliRunner

from deploy import task_image, workspaces
from deploy.cli import app
from deploy.spec import JobSpec
from pml_trainer import workspace
from pml_trainer.errors import BadInput

pytestmark = pytest.mark.docker
# Tiny, pure Python, and in no trainer image: what a task's requirements.txt adds.
EXTRA = "iniconfig==2.0.0"
VERSIONS = (  # each distribution's name as PEP 503 normalises it: tensorflow_cpu is tensorflow-cpu
    "import importlib.metadata as m, json, re; "
    "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version for d in m.distributions()}))"
)


@pytest.fixture
def daemon(docker_env, tmp_path, monkeypatch):
    for key in ("DOCKER_HOST", "PML_DOCKER"):
        monkeypatch.setenv(key, docker_env[key])
    if CA_BUNDLE.is_file():  # pip in the build, behind the test machines' TLS-intercepting proxy
        monkeypatch.setenv(task_image.CA_BUNDLE, str(CA_BUNDLE))
    monkeypatch.setenv(workspace.CACHE_VARIABLE, str(tmp_path / "cache"))
    return docker_env


def build(source, base: str, said: list[str]) -> tuple[workspaces.Shipment, bool]:
    shipment = workspaces.shipment(JobSpec(trainer={"task": "t.py", "workspace": str(source)}))
    assert shipment is not None
    return shipment, task_image.ensure(
        shipment.make_snapshot(), base, shipment.image, shipment.code_digest, said.append
    )


def inspect(env, image: str) -> dict:
    done = docker(env, "image", "inspect", image, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]


def python_in(env, image: str, code: str, *args: str) -> str:
    done = docker(env, "run", "--rm", *args, "--entrypoint", "python", image, "-c", code, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.fixture
def source(tmp_path, daemon):
    """A workspace of code no earlier run built (the daemon keeps its images between runs), whose
    task images are removed afterwards."""
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "run.py").write_text(f"RUN = {secrets.token_hex(8)!r}\n")
    yield folder
    images = docker(
        daemon, "image", "ls", "-q", "--filter", f"label={task_image.DIGEST_LABEL}", timeout=60
    ).stdout.split()
    if images:
        docker(daemon, "image", "rm", "-f", *images, timeout=120)


def test_the_task_image_rebuilds_only_the_code_and_keeps_the_trainers_pins(daemon, trainer_image, source):
    (source / "t.py").write_text("VERSION = 1\n")
    (source / "requirements.txt").write_text(EXTRA + "\n")
    said: list[str] = []

    first, built = build(source, trainer_image, said)
    assert built
    before = inspect(daemon, first.image)
    assert before["Config"]["Labels"][task_image.DIGEST_LABEL] == first.code_digest
    assert before["Config"]["Labels"][task_image.BASE_LABEL] == inspect(daemon, trainer_image)["Id"]

    # The same code again: no build at all.
    again, built = build(source, trainer_image, said)
    assert (again.image, built) == (first.image, False) and said[-1].startswith(f"image {first.image} is up to date")
    assert inspect(daemon, first.image)["Id"] == before["Id"]

    # New code alone: a new tag, and every layer but the last one the same.
    (source / "t.py").write_text("VERSION = 2\n")
    second, built = build(source, trainer_image, said)
    assert built and second.image != first.image
    layers, new_layers = before["RootFS"]["Layers"], inspect(daemon, second.image)["RootFS"]["Layers"]
    assert len(new_layers) == len(layers) and new_layers[:-1] == layers[:-1] and new_layers[-1] != layers[-1]
    base_layers = inspect(daemon, trainer_image)["RootFS"]["Layers"]
    assert layers[: len(base_layers)] == base_layers and len(layers) == len(base_layers) + 2  # requirements, code

    # The trainer image's distributions are all there at their versions; the requirement was added,
    # and neither pip nor tf-keras nor the full tensorflow came along.
    base = json.loads(python_in(daemon, trainer_image, VERSIONS))
    task = json.loads(python_in(daemon, second.image, VERSIONS))
    assert {name: task.get(name) for name in base} == base and base["tensorflow-cpu"].startswith("2.21.")
    assert task["iniconfig"] == "2.0.0" and not {"pip", "tf-keras", "tensorflow"} & set(task)

    # The code at /workspace says the digest of its source, as the trainer will record it; the
    # pods' user reads it and cannot change it.
    code = "from pml_trainer import workspace; import pathlib; print(workspace.digest(pathlib.Path('/workspace')))"
    assert python_in(daemon, second.image, code) == second.code_digest
    assert python_in(daemon, second.image, code, "--user", "10001:10001", "--read-only") == second.code_digest
    write = "import pathlib; pathlib.Path('/workspace/t.py').write_text('')"
    denied = docker(daemon, "run", "--rm", "--user", "10001:10001", "--entrypoint", "python", second.image, "-c", write)
    assert denied.returncode != 0 and "PermissionError" in denied.stderr


def test_requirements_that_would_move_a_pin_fail_the_build(daemon, trainer_image, source, capsys):
    (source / "t.py").write_text("")
    (source / "requirements.txt").write_text("tensorflow-cpu<2.21\n")
    with pytest.raises(BadInput) as refused:
        build(source, trainer_image, [])
    assert "did not build; fix the requirements.txt" in str(refused.value)
    assert "ResolutionImpossible" in capsys.readouterr().err  # pip held tensorflow-cpu at the image's version
    shipment = workspaces.shipment(JobSpec(trainer={"task": "t.py", "workspace": str(source)}))
    assert docker(daemon, "image", "inspect", shipment.image, timeout=60).returncode != 0


@pytest.fixture
def registry(tmp_path):
    """A real image registry on 127.0.0.1 (Debian's docker-registry, the CNCF distribution), which
    Docker pushes to over plain HTTP since it is on loopback."""
    if not shutil.which("docker-registry"):
        if os.getuid() != 0:
            pytest.fail("docker-registry is not installed and this is not root: run `apt-get install docker-registry`")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = run("apt-get", "install", "-y", "--no-install-recommends", "docker-registry", env=env)
        assert done.returncode == 0, done.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "registry")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    log = open(tmp_path / "registry.log", "wb")  # it logs every request: a pipe nobody reads would fill
    server = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return urllib.request.urlopen(f"http://{address}/v2/", timeout=1).status == 200
        except OSError:
            return server.poll() is not None

    try:
        wait_until(answers, 30, "the registry answering")
        assert server.poll() is None, (tmp_path / "registry.log").read_text()[-2000:]
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_cluster_that_pulls_from_a_registry_runs_the_task_image_by_its_pushed_digest(
    daemon, trainer_image, source, registry, kube, monkeypatch
):
    """`submit -t k8s --task --image-repo`: built, pushed to a real registry, and every pod names the
    image by the digest the registry serves for it (the API server is tests/k8s_fake.py)."""
    (source / "t.py").write_text("VERSION = 1\n")
    monkeypatch.chdir(source)
    repo = f"{registry}/pml"
    result = CliRunner().invoke(
        app,
        ["submit", "-t", "k8s", "--name", "pushed", "--task", "t.py", "--image-repo", repo, "--image", trainer_image,
         "--model-dir", "s3://models/pushed"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shipment = workspaces.shipment(JobSpec(trainer={"task": "t.py", "workspace": str(source)}))
    tag = shipment.image.partition(":")[2]
    request = urllib.request.Request(
        f"http://{registry}/v2/pml/parallel-ml-task/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        served = answer.headers["Docker-Content-Digest"]
    tfjob = next(r.body for r in kube.calls("POST") if r.body["kind"] == "TFJob")
    for replica in tfjob["spec"]["tfReplicaSpecs"].values():
        (container,) = replica["template"]["spec"]["containers"]
        assert container["image"] == f"{repo}/parallel-ml-task@{served}"
        assert {"name": "PML_IMAGE", "value": container["image"]} in container["env"]
        args = container["args"]
        assert args[args.index("--workspace") + 1] == "/workspace"

    # What any node pulls by that name is the task image, whatever the tag says later.
    docker(daemon, "image", "rm", f"{repo}/{shipment.image}", timeout=60)
    pulled = docker(daemon, "pull", f"{repo}/parallel-ml-task@{served}", timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    labels = inspect(daemon, f"{repo}/parallel-ml-task@{served}")["Config"]["Labels"]
    assert labels[task_image.DIGEST_LABEL] == shipment.code_digest


def test_a_docker_job_of_a_task_runs_on_its_image_and_records_it(daemon, trainer_image, tmp_path):
    """The whole way: `pmlctl submit -t docker --task`, the task image built, the job trained in it,
    and result.json naming the code by its source's digest and the image it ran."""
    ws = tmp_path / "ws"
    shutil.copytree(REGRESSION, ws)
    subprocess.run([sys.executable, "make_data.py", "data"], cwd=ws, check=True, capture_output=True)
    model_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "deploy", "submit", "-t", "docker", "--name", "taskjob", "--image", trainer_image,
         "--task", "trainer/task.py", "--workspace", str(ws), "--workers", "0", "--ps", "0", "--epochs", "1",
         "--task-param", "train=data/train-*.tfrecord", "--task-param", "eval=data/eval-*.tfrecord",
         "--model-dir", str(model_dir)],
        env={**os.environ, "PML_HOME": str(tmp_path / "home")},
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shipment = workspaces.shipment(JobSpec(trainer={"task": "trainer/task.py", "workspace": str(ws)}))
    recorded = json.loads((model_dir / "result.json").read_text())
    assert (recorded["code_digest"], recorded["image"]) == (shipment.code_digest, shipment.image)
    assert json.loads((model_dir / "run.json").read_text())["code_digest"] == shipment.code_digest
