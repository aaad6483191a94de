"""The task image: the job's trainer image with a workspace's code at /workspace (-t docker, -t k8s).

It is `parallel-ml-task:<first 12 hex of the code digest>`, built FROM the job's `--image` with a
Dockerfile written here, from a build context of its own that holds a copy of the snapshot (never
the user's folder, whose own .dockerignore docker would apply again). Its layers follow Docker's
advice on the build cache (docs.docker.com/build/cache): what changes least comes first, so the
requirements.txt layer comes before the code, and a change of code alone rebuilds only the last
layer. The build is skipped when an image of that tag exists and was built on the same base image:
its ID is in the label `parallel-ml.base`, so a trainer image rebuilt under the same name rebuilds
the task image too.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

from deploy import docker
from deploy.workspaces import IN_IMAGE
from pml_trainer import workspace
from pml_trainer.errors import BadInput, Unavailable

BASE_LABEL = "parallel-ml.base"
DIGEST_LABEL = "parallel-ml.code-digest"
CA_BUNDLE = "PML_CA_BUNDLE"  # as for `pmlctl image build`: pip's CA behind a TLS-intercepting proxy
DEPS = pathlib.Path(__file__).with_name("task_deps.py")


def dockerfile(base: str, user: str, requirements: bool) -> str:
    """The task image's Dockerfile: the requirements installed as root in one layer, then the code,
    owned by root and read-only to the trainer's user."""
    lines = [f"FROM {base}"]
    if requirements:
        # The two files are mounted, not copied: the layer holds what was installed, and its cache
        # key their content.
        lines += [
            "USER root",
            "RUN --mount=type=bind,source=deps,target=/tmp/pml-task \\",
            "    --mount=type=secret,id=ca_bundle,required=false \\",
            "    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \\",
            f"    && python /tmp/pml-task/{DEPS.name} /tmp/pml-task/{workspace.REQUIREMENTS}",
            f"USER {user or 'root'}",
        ]
    lines.append(f"COPY workspace/ {IN_IMAGE}/")
    return "\n".join(lines) + "\n"


def ensure(snapshot: pathlib.Path, base: str, tag: str, code_digest: str, say: Callable[[str], None]) -> bool:
    """Build the task image `tag` from a snapshot unless it is there already on the same base;
    whether it was built."""
    base_id, user = _base(base)
    if _inspect(tag, f'{{{{index .Config.Labels "{BASE_LABEL}"}}}}') == base_id:
        say(f"image {tag} is up to date: {code_digest} on {base}")
        return False
    with tempfile.TemporaryDirectory(prefix="pml-task-image-") as folder:
        context = pathlib.Path(folder)
        for path in workspace.files(snapshot):
            (context / "workspace" / path).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(snapshot / path, context / "workspace" / path)
        requirements = (snapshot / workspace.REQUIREMENTS).is_file()
        if requirements:
            (context / "deps").mkdir()
            shutil.copyfile(snapshot / workspace.REQUIREMENTS, context / "deps" / workspace.REQUIREMENTS)
            shutil.copyfile(DEPS, context / "deps" / DEPS.name)
        (context / "Dockerfile").write_text(dockerfile(base, user, requirements))
        argv = [*docker.cli(), "build", "--file", str(context / "Dockerfile"), "--tag", tag]
        argv += ["--label", f"{BASE_LABEL}={base_id}", "--label", f"{DIGEST_LABEL}={code_digest}"]
        ca_bundle = os.environ.get(CA_BUNDLE)
        if ca_bundle:
            argv += ["--secret", f"id=ca_bundle,src={pathlib.Path(ca_bundle).resolve()}"]
        # BuildKit for the secret mount; without buildx's default attestations the image is one plain
        # manifest, which a kind node imports (as deploy/cluster.py builds the trainer image).
        _stream(
            [*argv, str(context)],
            {"DOCKER_BUILDKIT": "1", "BUILDX_NO_DEFAULT_ATTESTATIONS": "1"},
            f"image {tag} did not build; fix the requirements.txt its output names, or the --image it builds on",
        )
    return True


def _link_or_copy(source: pathlib.Path, copy: pathlib.Path) -> None:
    try:
        os.link(source, copy)  # a snapshot is never written to, so sharing its inodes is safe
    except OSError:
        shutil.copy2(source, copy)


def _base(base: str) -> tuple[str, str]:
    """The base image's ID and user, pulled first where it is not on this machine."""
    found = _inspect(base, "{{.Id}} {{.Config.User}}")
    if found is None:
        pulled = docker.call("pull", base)
        if pulled.returncode != 0:
            said = pulled.stderr.strip().splitlines()[-1] if pulled.stderr.strip() else "no reply"
            raise BadInput(
                f"--image {base}: not on this machine and `docker pull` failed ({said}); build it with "
                "`pmlctl image build` or give --image an image you have"
            )
        found = _inspect(base, "{{.Id}} {{.Config.User}}") or ""
    base_id, _, user = found.partition(" ")
    return base_id, user


def _inspect(image: str, template: str) -> str | None:
    done = docker.call("image", "inspect", "--format", template, image)
    return done.stdout.strip() if done.returncode == 0 else None


def _stream(argv: list[str], env: dict[str, str], failure: str) -> None:
    """Run a docker command with its output on stderr as it comes; `BadInput` saying `failure` when
    it fails (a build, mostly for requirements that would not install or would change the image)."""
    print("+ " + shlex.join(argv), file=sys.stderr, flush=True)
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
    if proc.returncode != 0:
        raise BadInput(f"{failure} (`{shlex.join(argv[:3])} ...` exited with {proc.returncode}; its output is above)")


def push(tag: str, repo: str) -> str:
    """Push the task image to `repo` and return it by digest, `REPO/parallel-ml-task@sha256:...`,
    which names one image for ever: pods scheduled on nodes added later pull exactly the same
    (GKE, "About container image digests": cloud.google.com/kubernetes-engine/docs/concepts/about-container-images)."""
    remote = f"{repo.rstrip('/')}/{tag}"
    docker.output("tag", tag, remote)
    _stream(
        [*docker.cli(), "push", remote],
        {},
        f"{remote} was not pushed; log in to its registry (`docker login`, or `gcloud auth configure-docker`)",
    )
    digests = json.loads(_inspect(remote, "{{json .RepoDigests}}") or "[]")
    name = remote.rpartition(":")[0]
    pushed = next((d for d in digests if d.startswith(f"{name}@sha256:")), None)
    if pushed is None:
        raise Unavailable(f"`docker push {remote}` gave no digest for {name}; push again, or check the registry")
    return pushed
