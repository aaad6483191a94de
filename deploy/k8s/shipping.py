"""A task module's code on a cluster: the task image (deploy/task_image.py), where its nodes get it.

On a kind cluster (context `kind-NAME`, as `kind create cluster --name NAME` names it) the image is
loaded into the nodes the way `pmlctl cluster up` loads the trainer image. Elsewhere (GKE) it is
pushed to `--image-repo`, and the pods name it by digest, `REPO/parallel-ml-task@sha256:...`, never
by a tag that could move: a node added by the autoscaler an hour later pulls the very same image
(GKE, "About container image digests":
cloud.google.com/kubernetes-engine/docs/concepts/about-container-images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from deploy import workspaces
from deploy.spec import JobSpec
from pml_trainer.errors import BadInput

KIND_CONTEXT = "kind-"


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
