#!/usr/bin/env bash
# The whole kind path on a machine with Docker, kind and kubectl, from nothing to a finished job:
#   1. cluster up  2. submit 2 workers + 1 ps, model dir on MinIO  3. wait for success
#   4. checkpoint objects in MinIO  5. delete  6. cluster down
# Run from anywhere: deploy/kind/e2e.sh. It stops with a non-zero exit at the first failing step
# and then leaves the cluster up for a look (`pmlctl cluster down` removes it).
set -euo pipefail
cd "$(dirname "$0")/../.."

PMLCTL=${PMLCTL:-pmlctl}
CLUSTER=${CLUSTER:-pml}
CONTEXT=kind-$CLUSTER
JOB=e2e

step() { printf '\n==> %s\n' "$*"; }

step "1/6 cluster up"
"$PMLCTL" cluster up --name "$CLUSTER"

step "2/6 submit $JOB: 1 chief, 2 workers, 1 ps, model dir s3://pml/$JOB on MinIO"
"$PMLCTL" submit --target k8s --context "$CONTEXT" -f deploy/kind/e2e-job.yaml --replace

step "3/6 wait for success"
if ! "$PMLCTL" wait "$JOB" --context "$CONTEXT" --timeout 1800; then
    "$PMLCTL" status "$JOB" --context "$CONTEXT" || true
    "$PMLCTL" logs "$JOB" --context "$CONTEXT" || true
    exit 1
fi

step "4/6 checkpoint objects in MinIO"
# The MinIO image carries the mc client; it lists the bucket from inside the pod, with the
# credentials of that pod's environment (expanded there, hence the single quotes).
# shellcheck disable=SC2016
objects=$(kubectl --context "$CONTEXT" -n minio exec deploy/minio -- sh -c \
    'mc alias set local http://127.0.0.1:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null && mc ls --recursive local/pml/'"$JOB"'/')
printf '%s\n' "$objects"
grep -q 'ckpt-[0-9]*\.index' <<<"$objects" || { echo "e2e: no ckpt-N.index under s3://pml/$JOB" >&2; exit 1; }

step "5/6 delete $JOB"
"$PMLCTL" delete "$JOB" --context "$CONTEXT"

step "6/6 cluster down"
"$PMLCTL" cluster down --name "$CLUSTER"

printf '\ne2e: every step passed\n'
