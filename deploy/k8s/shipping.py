"""A task module's code on a cluster: the task image (deploy/task_image.py), where its nodes get it.

On a kind cluster (context `kind-NAME`, as `kind create cluster --name NAME` names it) the image is
loaded into the nodes the way `pmlctl cluster up` loads the trainer image. Elsewhere (GKE) it is
pushed to `--image-repo`, and the pods name it by digest, `REPO/parallel-ml-task@sha256:...`, never
by a tag that could move: a node added by the autoscaler an hour later pulls the very same image
(GKE, "About container image digests":
cloud.google.com/kubernetes-engine/docs/concepts/about-container-images).

The job's own image gets the same rule (`pinned`): off kind, an image given by tag is looked up in
its registry and the pods name it by that manifest digest. Kubernetes defaults a container's pull
policy to Always for `:latest` or no tag and to IfNotPresent otherwise (SetDefaults_Container,
kubernetes/kubernetes pkg/apis/core/v1/defaults.go; kubernetes.io/docs/concepts/containers/images/
#image-pull-policy), and the chart always sets one: IfNotPresent on a tag lets a warm node run the
image it pulled last week while a new node pulls this week's, one job on two versions of the code.
A digest names one image for ever, so IfNotPresent is right for it, and for kind, whose nodes get
their images loaded (`kind load`) and could not pull them from anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from deploy import workspaces
from deploy.spec import JobSpec
from pml_trainer.errors import BadInput, Unavailable

KIND_CONTEXT = "kind-"
DIGEST = "@sha256:"


def in_a_registry_by_tag(image: str) -> bool:
    """An image named by tag rather than digest (any `@`: sha256, sha512...) that a node pulls from a
    registry: any name with a `/`, whether its first part is a domain (`HOST/...`) or Docker Hub's
    `ORG/REPO` (distribution/reference normalize.go, splitDockerDomain). A one-part name such as
    parallel-ml:latest is taken as what kind nodes are loaded with."""
    return "/" in image and "@" not in image


class Unresolved(Exception):
    """A tag's digest could not be looked up; the message says why, in a few words."""


@dataclass(frozen=True)
class Destination:
    kind_cluster: str | None = None
    repo: str | None = None

    def image(self, shipment: workspaces.Shipment) -> str:
        """The image's name until it is shipped: a pushed one's digest is known only after the push."""
        return f"{self.repo.rstrip('/')}/{shipment.image}" if self.repo else shipment.image

    def describe(self, shipment: workspaces.Shipment, base: str) -> str:
        if self.repo:
            return workspaces.image_note(shipment, base, f"pushed to {self.repo} and run by its digest")
        return workspaces.image_note(shipment, base, f"loaded into the nodes of kind cluster {self.kind_cluster}")


def destination(context: str, repo: str | None) -> Destination:
    if repo:
        return Destination(repo=repo)
    if context.startswith(KIND_CONTEXT):
        return Destination(kind_cluster=context.removeprefix(KIND_CONTEXT))
    raise BadInput(
        f"--task on the cluster of context {context}: give --image-repo, a registry its nodes pull from "
        "(GKE: REGION-docker.pkg.dev/PROJECT/REPO), where the task image is pushed"
    )


def planned(spec: JobSpec, shipment: workspaces.Shipment, where: Destination) -> JobSpec:
    """The job on its task image. A loaded image is in no registry, so a kind node must never try to pull it."""
    spec = workspaces.in_image(spec, where.image(shipment))
    return spec if where.repo else spec.model_copy(update={"image_pull_policy": "IfNotPresent"})


def ship(shipment: workspaces.Shipment, base: str, where: Destination, note: Callable[[str], None]) -> str:
    """Build the task image, then load or push it; the image the pods must name."""
    from deploy import cluster, docker, task_image

    docker.require_daemon()
    task_image.ensure(shipment.make_snapshot(), base, shipment.image, shipment.code_digest, note)
    if where.repo:
        return task_image.push(shipment.image, where.repo)
    assert where.kind_cluster is not None
    cluster.load_image(shipment.image, where.kind_cluster)
    return shipment.image


def pinned(spec: JobSpec, context: str, note: Callable[[str], None]) -> JobSpec:
    """The job's image as its pods name it, and when the kubelet pulls it.

    On kind (context `kind-NAME`) the image was loaded into the nodes: kept as given, IfNotPresent
    unless the job says otherwise. Elsewhere a tag is replaced by its registry's digest, which
    IfNotPresent can safely keep. When the lookup fails the tag stays, pulled on every start
    (Always) unless the job asked for IfNotPresent, which is refused: nodes would mix versions.
    `image_pull_policy: Never` (images put on the nodes by hand) keeps the image as given."""
    explicit = "image_pull_policy" in spec.model_fields_set
    if context.startswith(KIND_CONTEXT) or DIGEST in spec.image or spec.image_pull_policy == "Never":
        return spec
    try:
        by_digest = registry_digest(spec.image)
    except Unresolved as why:
        if explicit and spec.image_pull_policy == "IfNotPresent":
            raise BadInput(
                f"image {spec.image} on the cluster of context {context}: its digest could not be looked up "
                f"({why}), and with image_pull_policy: IfNotPresent a node that holds an older image of that tag "
                f"runs it; name the image by digest (NAME@sha256:...), set image_pull_policy: Always, or let "
                "`docker buildx imagetools inspect` reach the registry (`docker login`, `gcloud auth configure-docker`)"
            ) from None
        note(
            f"image {spec.image}: digest not looked up ({why}); the pods pull the tag on every start "
            "(imagePullPolicy: Always), so a tag pushed during the job can still split it across two images"
        )
        return spec if explicit else spec.model_copy(update={"image_pull_policy": "Always"})
    note(f"image {spec.image} is {by_digest} in its registry; the pods name it by that digest")
    return spec.model_copy(update={"image": by_digest})


def registry_digest(image: str) -> str:
    """`NAME[:TAG]` as `NAME@sha256:...`, the digest of the manifest its registry serves for the tag
    (for a multi-platform image, the index: each node then picks its own platform, as a pull by tag
    does). Asked with `docker buildx imagetools inspect`, which reads the registry with the docker
    CLI's credentials and pulls nothing. Raises Unresolved."""
    from deploy import docker

    try:
        done = docker.call("buildx", "imagetools", "inspect", "--format", "{{json .Manifest}}", image)
    except (BadInput, Unavailable) as err:
        raise Unresolved(str(err)) from None
    said = done.stderr.strip().splitlines()
    if done.returncode != 0:
        raise Unresolved(said[-1] if said else f"`docker buildx imagetools inspect` exited with {done.returncode}")
    try:
        digest = json.loads(done.stdout)["digest"]
    except (ValueError, KeyError, TypeError):
        raise Unresolved(f"`docker buildx imagetools inspect` gave no digest: {done.stdout.strip()[:200]!r}") from None
    if not (isinstance(digest, str) and digest.startswith("sha256:")):
        raise Unresolved(f"`docker buildx imagetools inspect` gave digest {digest!r}")
    return f"{_untagged(image)}@{digest}"


def _untagged(image: str) -> str:
    """The image's name without its tag; a registry's port (`host:5000/name`) is not a tag."""
    name, colon, tag = image.rpartition(":")
    return name if colon and "/" not in tag else image
