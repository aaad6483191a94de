#!/usr/bin/env bash
# Build the trainer image for the node pools' platform and push it to the Artifact Registry
# repository of main.tf.
#   deploy/gke/push-image.sh            (after `terraform apply` in deploy/gke)
# It reads the image name and platform from Terraform's outputs, or from IMAGE and PLATFORM when
# they are set. The platform is linux/amd64 (the n2 machine types of main.tf) whatever the
# machine building it: an arm64 laptop builds amd64 through docker buildx and QEMU emulation.
set -euo pipefail
cd "$(dirname "$0")"

IMAGE=${IMAGE:-$(terraform output -raw image)}
PLATFORM=${PLATFORM:-$(terraform output -raw image_platform 2>/dev/null || echo linux/amd64)}
REGISTRY=${IMAGE%%/*}

if ! docker buildx version >/dev/null 2>&1; then
    echo "push-image.sh: docker buildx is missing; install it (Debian: apt-get install docker-buildx," \
        "or Docker's docker-buildx-plugin)" >&2
    exit 1
fi

echo "==> docker login to $REGISTRY through gcloud"
gcloud auth configure-docker "$REGISTRY" --quiet

echo "==> build $IMAGE for $PLATFORM and push it"
docker buildx build --platform "$PLATFORM" --tag "$IMAGE" --push ../..
