#!/usr/bin/env bash
# Run a command (the ceph test tier) with a single-node Ceph cluster up, and take it down after.
#   tests/ceph/run.sh COMMAND...
set -euo pipefail
here=$(dirname "$(realpath "$0")")
dir=$(mktemp -d /tmp/pml-ceph.XXXXXX)
trap '"$here/cluster.sh" down "$dir"' EXIT
started=$(date +%s)
while IFS= read -r line; do
    export "${line?}"
done < <("$here/cluster.sh" up "$dir")
if [[ -z ${PML_CEPH_CONF:-} ]]; then
    echo "error: the Ceph cluster did not come up; see the lines above and $dir/log" >&2
    exit 1
fi
echo "ceph cluster up in $(($(date +%s) - started))s ($dir)" >&2
"$@"
