"""`pmlctl image build` and `pmlctl image push`: the docker commands that make and publish the
trainer image from the Dockerfile at the root of a parallel-ml checkout.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import subprocess
import sys

from deploy import docker
from deploy.spec import JobSpec
from pml_trainer.errors import BadInput

DEFAULT_TAG = JobSpec.model_fields["image"].default  # what jobs run unless told otherwise
GPU_TAG = DEFAULT_TAG.rpartition(":")[0] + ":latest-gpu"


def build_command(
    context: pathlib.Path, tag: str, gpu: bool, base: str | None, ca_bundle: pathlib.Path | None
) -> list[str]:
    """`docker build` for the image. The Dockerfile reads a CA bundle as a BuildKit secret."""
    if not (context / "Dockerfile").is_file():
        raise BadInput(f"no Dockerfile in {context.resolve()}; run from the parallel-ml checkout or give --context")
    if ca_bundle is not None and not ca_bundle.is_file():
        raise BadInput(f"--ca-bundle {ca_bundle}: no such file; give a PEM file of CA certificates")
    argv = [*docker.cli(), "build", "--tag", tag, "--build-arg", f"GPU={int(gpu)}"]
    if base:
        argv += ["--build-arg", f"BASE={base}"]
    if ca_bundle is not None:
        argv += ["--secret", f"id=ca_bundle,src={ca_bundle.resolve()}"]
    return [*argv, str(context)]


def push_command(tag: str) -> list[str]:
    return [*docker.cli(), "push", tag]


def run(argv: list[str]) -> int:
    """Say what runs, then run it with BuildKit on (the Dockerfile's secret mount needs it)."""
    docker.require_daemon()
    print("+ DOCKER_BUILDKIT=1 " + shlex.join(argv), file=sys.stderr, flush=True)
    return subprocess.call(argv, env={**os.environ, "DOCKER_BUILDKIT": "1"})
