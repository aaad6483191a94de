"""`pmlctl cluster up|down`: a kind cluster ready for `pmlctl submit --target k8s`.

Up makes the cluster from deploy/kind/cluster.yaml, installs the Kubeflow Training Operator
(pinned: v1.9 is the last line with TFJob), deploys MinIO with a bucket and a credentials Secret,
and builds the trainer image and loads it into the nodes (one platform, no attestations: see up()).
Each step says what it does and is skipped when it is already done, so `up` can be run again
after a failure.
"""

from __future__ import annotations

import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

from pml_trainer.errors import BadInput, Unavailable

KIND_DIR = pathlib.Path(__file__).resolve().parent / "kind"
ROOT = KIND_DIR.parent.parent
OPERATOR = "github.com/kubeflow/trainer.git/manifests/overlays/standalone?ref=v1.9.4"
INSTALL = {
    "kind": "install kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "kubectl": "install kubectl: https://kubernetes.io/docs/tasks/tools/ (Debian: apt-get install kubectl)",
    "docker": "install Docker: https://docs.docker.com/engine/install/ (Debian: apt-get install docker.io)",
}


def up(name: str, image: str, rebuild: bool) -> None:
    _need("kind", "kubectl", "docker")
    kubectl = ["kubectl", "--context", f"kind-{name}"]
    _step(
        f"kind cluster {name}",
        lambda: name in _out(["kind", "get", "clusters"]).split(),
        [["kind", "create", "cluster", "--name", name, "--config", str(KIND_DIR / "cluster.yaml"), "--wait", "120s"]],
    )
    _step(
        "Kubeflow Training Operator v1.9.4 (TFJob)",
        lambda: _ok([*kubectl, "get", "crd", "tfjobs.kubeflow.org"]),
        [
            [*kubectl, "apply", "--server-side", "-k", OPERATOR],
            [*kubectl, "-n", "kubeflow", "rollout", "status", "deployment/training-operator", "--timeout", "300s"],
        ],
    )
    _step(
        "MinIO at http://minio.minio.svc:9000, bucket pml, Secret pml-s3",
        lambda: _ok(
            [*kubectl, "-n", "minio", "wait", "--for=condition=complete", "job/make-bucket", "--timeout", "1s"]
        ),
        [
            [*kubectl, "apply", "-f", str(KIND_DIR / "minio.yaml")],
            [*kubectl, "-n", "minio", "rollout", "status", "deployment/minio", "--timeout", "300s"],
            [*kubectl, "-n", "minio", "wait", "--for=condition=complete", "job/make-bucket", "--timeout", "300s"],
        ],
    )
    _step(
        f"trainer image {image}",
        lambda: not rebuild and _ok(["docker", "image", "inspect", image]),
        [_build_command(image)],
    )
    load_image(image, name)
    print(
        f"cluster {name} is ready: pmlctl submit --target k8s --context kind-{name} "
        f"-f {KIND_DIR.relative_to(ROOT) / 'e2e-job.yaml'}"
    )


def load_image(image: str, name: str) -> None:
    """Load an image of this machine's docker into the nodes of kind cluster `name`: the trainer
    image here, and a task image at `pmlctl submit -t k8s --task` (deploy/k8s/shipping.py).

    Not `kind load docker-image`: it saves the image's whole index, and the nodes' `ctr import
    --all-platforms` fails on any manifest whose blobs are not there, such as BuildKit's
    attestations or the other platforms of a pulled image under Docker's containerd image store
    (kubernetes-sigs/kind#3795). kind's maintainers point to saving the one platform and loading
    that archive. The load runs every time; importing an image a node has changes nothing."""
    _need("kind")
    with tempfile.TemporaryDirectory(prefix="pml-image-") as folder:
        archive = str(pathlib.Path(folder) / "image.tar")
        _step(
            f"image {image} in the nodes of {name}",
            lambda: False,
            [_save_command(image, archive), ["kind", "load", "image-archive", archive, "--name", name]],
        )


def down(name: str) -> None:
    _need("kind")
    _step(
        f"remove kind cluster {name}",
        lambda: name not in _out(["kind", "get", "clusters"]).split(),
        [["kind", "delete", "cluster", "--name", name]],
    )


def _build_command(image: str) -> list[str]:
    from deploy import image as images

    # The Dockerfile mounts a build secret, which needs BuildKit. Without the provenance attestation
    # that buildx adds by default, the image is a plain manifest that any kind node can import;
    # the variable means nothing to a docker without buildx, where `--provenance=false` would fail.
    return [
        "env",
        "DOCKER_BUILDKIT=1",
        "BUILDX_NO_DEFAULT_ATTESTATIONS=1",
        *images.build_command(ROOT, image, gpu=False, base=None, ca_bundle=None),
    ]


def _save_command(image: str, archive: str) -> list[str]:
    """`docker image save` of the platform the image was built for, where docker can choose one."""
    argv = ["docker", "image", "save", "--output", archive, image]
    # --platform came with Docker 28. Before, the default (classic) image store holds one platform
    # per image and saves just that, and a build without attestations has no index to trip on.
    platform = _out(["docker", "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", image]).strip()
    if platform.count("/") == 1 and "--platform" in _out(["docker", "image", "save", "--help"]):
        argv[3:3] = ["--platform", platform]
    return argv


def _step(what: str, done: Callable[[], bool], commands: list[list[str]]) -> None:
    if done():
        print(f"{what}: already there, skipped", flush=True)
        return
    print(f"{what}: ...", flush=True)
    for argv in commands:
        print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
        if subprocess.call(argv) != 0:
            # Mostly what the tool reaches failing (a download, the cluster, the daemon), not the input.
            raise Unavailable(
                f"{what}: `{shlex.join(argv)}` failed (its output is above); fix that and run "
                "`pmlctl cluster up` again: finished steps are skipped"
            )


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise BadInput(f"{tool} not found on PATH; {INSTALL[tool]}")


def _ok(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True).returncode == 0


def _out(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout
