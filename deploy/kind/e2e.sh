#!/usr/bin/env bash
# The whole kind path on a machine with Docker, kind and kubectl, from nothing to a finished job:
#   1. cluster up  2. submit 1 chief, 2 workers, 1 ps, 1 evaluator, model dir on MinIO
#   3. wait for success  4. the ps ended by itself, never restarted
#   5. checkpoints and the evaluator's eval.jsonl in MinIO  6. the same job again with --replace
#   7. delete  8. cluster down
# Run from anywhere: deploy/kind/e2e.sh. It stops with a non-zero exit at the first failing step
# and then leaves the cluster up for a look (`pmlctl cluster down` removes it).
set -euo pipefail
cd "$(dirname "$0")/../.."

PMLCTL=${PMLCTL:-pmlctl}
CLUSTER=${CLUSTER:-pml}
CONTEXT=kind-$CLUSTER
JOB=e2e

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "e2e: $*" >&2; exit 1; }

# Wait for the job; on failure show its status and the chief's log.
wait_for_success() {
    if ! "$PMLCTL" wait "$JOB" --context "$CONTEXT" --timeout 1800; then
        "$PMLCTL" status "$JOB" --context "$CONTEXT" || true
        "$PMLCTL" logs "$JOB" --context "$CONTEXT" || true
        fail "$JOB did not succeed"
    fi
}

# A command in the MinIO pod, whose image carries the mc client and whose environment has the
# credentials (expanded there, hence the single quotes).
in_minio() {
    # shellcheck disable=SC2016
    kubectl --context "$CONTEXT" -n minio exec deploy/minio -- sh -c \
        'mc alias set local http://127.0.0.1:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null && '"$1"
}

step "1/8 cluster up"
"$PMLCTL" cluster up --name "$CLUSTER"

step "2/8 submit $JOB: 1 chief, 2 workers, 1 ps, 1 evaluator, model dir s3://pml/$JOB on MinIO"
"$PMLCTL" submit --target k8s --context "$CONTEXT" -f deploy/kind/e2e-job.yaml --replace

step "3/8 wait for success"
wait_for_success

step "4/8 the ps ended by itself and never restarted"
# Once the chief is done the ps exits 0 by itself (Succeeded). A ps still running when the job
# ends is deleted by the operator (cleanPodPolicy Running), so give it two minutes; a restart
# count above 0 means it was restarted after exiting, which is the bug this step is for.
ps_pods() {
    kubectl --context "$CONTEXT" get pods -l "parallel-ml/job=$JOB,parallel-ml/role=ps" -o \
        jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.phase}{" "}{range .status.containerStatuses[*]}{.restartCount}{end}{"\n"}{end}'
}
for _ in $(seq 60); do
    pods=$(ps_pods)
    grep -qE ' (Pending|Running) ' <<<"$pods" || break
    sleep 2
done
printf '%s\n' "${pods:-(no ps pod left: removed with the finished job)}"
while read -r pod phase restarts; do
    [ -n "$pod" ] || continue
    [ "$phase" = Succeeded ] || fail "ps pod $pod is $phase after the job succeeded, not Succeeded"
    [ "${restarts:-0}" = 0 ] || fail "ps pod $pod was restarted $restarts times"
done <<<"$pods"

step "5/8 checkpoints and eval.jsonl in MinIO"
objects=$(in_minio 'mc ls --recursive local/pml/'"$JOB"'/')
printf '%s\n' "$objects"
grep -qE 'ckpt-([0-9a-f]+-)?[0-9]+\.index' <<<"$objects" || fail "no ckpt-N.index under s3://pml/$JOB"
grep -q ' eval\.jsonl$' <<<"$objects" || fail "no eval.jsonl under s3://pml/$JOB: the evaluator wrote nothing"
evaluations=$(in_minio 'mc cat local/pml/'"$JOB"'/eval.jsonl')
printf '%s\n' "$evaluations"
grep -q '"step"' <<<"$evaluations" || fail "s3://pml/$JOB/eval.jsonl holds no evaluation"

step "6/8 the same job again, with --replace, right after it finished"
"$PMLCTL" submit --target k8s --context "$CONTEXT" -f deploy/kind/e2e-job.yaml --replace
wait_for_success

step "7/8 delete $JOB"
"$PMLCTL" delete "$JOB" --context "$CONTEXT"

step "8/8 cluster down"
"$PMLCTL" cluster down --name "$CLUSTER"

printf '\ne2e: every step passed\n'
