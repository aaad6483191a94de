"""The task image (deploy/task_image.py), built by a real Docker daemon FROM the real trainer image:
nothing rebuilt for the same code, only the last layer for new code, the trainer image's pins held
against the requirements, and the code at /workspace with the digest of its source."""

from __future__ import annotations

import json
import secrets

import pytest
from dockerd import CA_BUNDLE, docker, docker_env, trainer_image  # noqa: F401 (fixtures)

from deploy import task_image, workspaces
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
    assert python_in(daemon, second.image, code, "--user", "1000:1000", "--read-only") == second.code_digest
    write = "import pathlib; pathlib.Path('/workspace/t.py').write_text('')"
    denied = docker(daemon, "run", "--rm", "--user", "1000:1000", "--entrypoint", "python", second.image, "-c", write)
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
