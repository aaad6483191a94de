#!/usr/bin/env bash
# Build the trainer image and push it to the Artifact Registry repository of main.tf.
#   deploy/gke/push-image.sh            (after `terraform apply` in deploy/gke)
# It reads the image name from Terraform's outputs, or from IMAGE when that is set.
set -euo pipefail
cd "$(dirname "$0")"

IMAGE=${IMAGE:-$(terraform output -raw image)}
REGISTRY=${IMAGE%%/*}

echo "==> docker login to $REGISTRY through gcloud"
gcloud auth configure-docker "$REGISTRY" --quiet

echo "==> build $IMAGE"
DOCKER_BUILDKIT=1 docker build --tag "$IMAGE" ../..

echo "==> push $IMAGE"
docker push "$IMAGE"
