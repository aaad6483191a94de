"""`pmlctl cluster up|down`: a kind cluster ready for `pmlctl submit --target k8s`.

Up makes the cluster from deploy/kind/cluster.yaml, installs the Kubeflow Training Operator
(pinned: v1.9 is the last line with TFJob), deploys MinIO with a bucket and a credentials Secret,
and builds the trainer image and loads it into the nodes. Each step says what it does and is
skipped when it is already done, so `up` can be run again after a failure.
"""

from __future__ import annotations

import pathlib
import shlex
import shutil
import subprocess
import sys
from typing import Callable

from trainer.options import BadInput

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
    _step(f"kind cluster {name}", lambda: name in _out(["kind", "get", "clusters"]).split(),
          [["kind", "create", "cluster", "--name", name, "--config", str(KIND_DIR / "cluster.yaml"), "--wait", "120s"]])
    _step("Kubeflow Training Operator v1.9.4 (TFJob)",
          lambda: _ok([*kubectl, "get", "crd", "tfjobs.kubeflow.org"]),
          [[*kubectl, "apply", "--server-side", "-k", OPERATOR],
           [*kubectl, "-n", "kubeflow", "rollout", "status", "deployment/training-operator", "--timeout", "300s"]])
    _step("MinIO at http://minio.minio.svc:9000, bucket pml, Secret pml-s3",
          lambda: _ok([*kubectl, "-n", "minio", "wait", "--for=condition=complete", "job/make-bucket", "--timeout", "1s"]),
          [[*kubectl, "apply", "-f", str(KIND_DIR / "minio.yaml")],
           [*kubectl, "-n", "minio", "rollout", "status", "deployment/minio", "--timeout", "300s"],
           [*kubectl, "-n", "minio", "wait", "--for=condition=complete", "job/make-bucket", "--timeout", "300s"]])
    _step(f"trainer image {image}", lambda: not rebuild and _ok(["docker", "image", "inspect", image]),
          [_build_command(image)])
    # kind compares image IDs itself and skips nodes that have this one already.
    _step(f"image {image} in the nodes of {name}", lambda: False,
          [["kind", "load", "docker-image", image, "--name", name]])
    print(f"cluster {name} is ready: pmlctl submit --target k8s --context kind-{name} "
          f"-f {KIND_DIR.relative_to(ROOT) / 'e2e-job.yaml'}")


def down(name: str) -> None:
    _need("kind")
    _step(f"remove kind cluster {name}", lambda: name not in _out(["kind", "get", "clusters"]).split(),
          [["kind", "delete", "cluster", "--name", name]])


def _build_command(image: str) -> list[str]:
    from deploy import image as images

    # The Dockerfile mounts a build secret, which needs BuildKit.
    return ["env", "DOCKER_BUILDKIT=1", *images.build_command(ROOT, image, gpu=False, base=None, ca_bundle=None)]


def _step(what: str, done: Callable[[], bool], commands: list[list[str]]) -> None:
    if done():
        print(f"{what}: already there, skipped", flush=True)
        return
    print(f"{what}: ...", flush=True)
    for argv in commands:
        print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
        if subprocess.call(argv) != 0:
            raise BadInput(f"{what}: `{shlex.join(argv)}` failed (its output is above); fix that and run "
                           "`pmlctl cluster up` again: finished steps are skipped")


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise BadInput(f"{tool} not found on PATH; {INSTALL[tool]}")


def _ok(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True).returncode == 0


def _out(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout
