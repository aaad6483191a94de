#!/usr/bin/env bash
# Run a command (the ceph test tier) with a single-node Ceph cluster up, and take it down after.
#   tests/ceph/run.sh COMMAND...
set -euo pipefail
here=$(dirname "$(realpath "$0")")
dir=$(mktemp -d /tmp/pml-ceph.XXXXXX)
trap '"$here/cluster.sh" down "$dir"' EXIT
started=$(date +%s)
# Once in CI, right after the main suite, the OSD of a new cluster failed its start ("wrong fsid")
# and not in the nine starts since; a second attempt starts over with a new fsid. The logs of a failed
# attempt are kept, for the next time.
for attempt in 1 2; do
    while IFS= read -r line; do
        export "${line?}"
    done < <("$here/cluster.sh" up "$dir")
    [[ -n ${PML_CEPH_CONF:-} ]] && break
    kept=$(mktemp -d /tmp/pml-ceph-failed.XXXXXX)
    cp -r "$dir/log" "$kept/" 2>/dev/null || true
    echo "warning: the Ceph cluster did not come up (attempt $attempt); its logs are in $kept" >&2
    "$here/cluster.sh" down "$dir"
done
if [[ -z ${PML_CEPH_CONF:-} ]]; then
    echo "error: the Ceph cluster did not come up twice; see the lines above" >&2
    exit 1
fi
echo "ceph cluster up in $(($(date +%s) - started))s ($dir)" >&2
"$@"
