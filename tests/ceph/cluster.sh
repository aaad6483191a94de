#!/usr/bin/env bash
# A single-node Ceph cluster for the `ceph` test tier: one monitor, one OSD on memstore, no
# auth, pools of size 1, no mgr. The RADOS Gateway itself is started by the tests (they stop and
# restart it); this script makes sure it can start and has an S3 user.
#
#   tests/ceph/cluster.sh up DIR     install the packages if missing, start mon and OSD, create the user
#   tests/ceph/cluster.sh down DIR   stop every daemon started from DIR and remove DIR
#
# `up` prints the environment the tests need (PML_CEPH_CONF, AWS keys) as KEY=VALUE lines.
set -euo pipefail

cmd=${1:?usage: cluster.sh up|down DIR}
dir=$(realpath -m "${2:?usage: cluster.sh up|down DIR}")
conf=$dir/ceph.conf
mon_port=${CEPH_MON_PORT:-6789}
access_key=pml-ceph-key
secret_key=pml-ceph-secret

down() {
    for pidfile in "$dir"/run/*.pid; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$dir"
}

install() {
    command -v radosgw >/dev/null && command -v ceph-osd >/dev/null && command -v ceph-mon >/dev/null && return
    echo "installing ceph-mon, ceph-osd, radosgw and ceph-common from Debian" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        ceph-mon ceph-osd radosgw ceph-common >&2
}

wait_until() {  # wait_until SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "error: $what did not happen within ${seconds}s; logs in $dir/log" >&2
    return 1
}

up() {
    install
    down
    mkdir -p "$dir"/{mon,osd,run,log,rgw}
    local fsid osd_uuid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    # "ms mon client mode = crc" for the gateway: radosgw 16.2.15 asks the monitor for the secure
    # mode, which auth none cannot give, and never connects ("get_initial_auth_request returned -13").
    cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = 127.0.0.1:$mon_port
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
keyring = $dir/keyring
[mon.a]
mon data = $dir/mon
[osd.0]
osd data = $dir/osd
osd objectstore = memstore
memstore device bytes = 2147483648
[client.rgw.a]
rgw data = $dir/rgw
rgw frontends = beast endpoint=127.0.0.1:7480
ms mon client mode = crc
CONF
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    monmaptool --create --add a "127.0.0.1:$mon_port" --fsid "$fsid" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring"
    ceph-mon -c "$conf" -i a
    wait_until 30 "the monitor answering" ceph -c "$conf" mon stat
    ceph -c "$conf" osd new "$osd_uuid" >/dev/null
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" 2>/dev/null
    ceph-osd -c "$conf" -i 0
    wait_until 60 "the OSD coming up" bash -c "ceph -c '$conf' osd stat | grep -q '1 up'"
    radosgw-admin -c "$conf" user create --uid pml --display-name pml \
        --access-key "$access_key" --secret-key "$secret_key" >/dev/null
    echo "PML_CEPH_CONF=$conf"
    echo "AWS_ACCESS_KEY_ID=$access_key"
    echo "AWS_SECRET_ACCESS_KEY=$secret_key"
}

case $cmd in
    up) up ;;
    down) down ;;
    *) echo "error: unknown command $cmd; use up or down" >&2; exit 2 ;;
esac
