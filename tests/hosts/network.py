"""Test hosts: one Linux network namespace per task, on a switch of their own, with names.

A `Lab` makes a switch (a bridge in a network namespace of its own, so that nothing is added to
the machine's own namespace) and, per host, a namespace joined to the switch by a veth pair, an
address on a private subnet and a hosts file that `ip netns exec` mounts over /etc/hosts
(ip-netns(8): every file in /etc/netns/NAME/ is bind-mounted over its namesake in /etc). The hosts
reach each other and nothing else: the switch has no uplink and no host has a route out.

A name can be held back and published later (`publish`), as cluster DNS publishes a Service's
name only once its pod is up; a link can be cut and restored (`link_down`, `link_up`), shaped to
a rate (`shape`), and its bytes counted (`counters`).

Everything a lab makes is recorded with its janitor (tests/hosts/janitor.py) before it is made.
The janitor is a process of its own session that removes all of it, and kills every process
still inside, once its pipe from the lab closes: at `close()`, or when the process that made the
lab ends in any way, SIGKILL included.

Needs root. Used by the hosts tier's tests (tests/hosts/) and by benchmarks of the network:
`sys.path.insert(0, "tests")`, then `from hosts.network import Lab`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import re
import secrets
import subprocess
import sys
import tempfile

NETWORK = ipaddress.ip_network("10.99.0.0/24")  # private, and only ever inside the lab's own namespaces
RUN_NETNS = pathlib.Path("/run/netns")  # where `ip netns add` pins a namespace by name
ETC_NETNS = pathlib.Path("/etc/netns")
JANITOR = pathlib.Path(__file__).with_name("janitor.py")
HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,14}$")  # also the name of its link on the switch: at most 15 characters
BRIDGE, LINK = "br0", "eth0"
LOCALHOST = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
# Names come from the hosts file alone: a name not published yet fails at once, as NXDOMAIN does,
# instead of waiting on a name server that is not there. Both resolvers a task uses read it: glibc
# (Python's getaddrinfo, the trainer's own wait for its peers) and c-ares, which gRPC in TensorFlow
# 2.21 resolves with. That gRPC runs its "event_engine_dns" experiment ("Using EventEngine dns
# resolver" at start-up with GRPC_VERBOSITY=debug; grpc's src/core/resolver/dns/dns_resolver_plugin.cc),
# whose PosixEventEngine::GetDNSResolver (src/core/lib/event_engine/posix_engine/posix_engine.cc)
# makes an AresResolver unless GRPC_DNS_RESOLVER=native asks for getaddrinfo; c-ares takes its lookup
# order from this file's "hosts:" line (c-ares' src/lib/ares_sysconfig_files.c). A channel whose
# name failed to resolve tries again after a backoff of 1 s, times 1.6 per failure up to 120 s, with
# 20% jitter, and re-resolves a name that resolved at most every 30 s
# (src/core/resolver/dns/event_engine/event_engine_client_channel_resolver.cc, on the PollingResolver
# of src/core/resolver/polling_resolver.cc): a name published late reaches a channel that already
# failed only at its next try, so the trainer opens its channels once every peer resolves.
NSSWITCH = "hosts: files\n"
RESOLV_CONF = "# the hosts tier: names come from /etc/hosts only\n"
TBF_LATENCY = "50ms"  # the longest a packet waits in the shaper's queue before it is dropped


class LabError(Exception):
    """Why a lab cannot be made, in one line."""


class Host:
    def __init__(self, name: str, netns: str, address: str):
        self.name, self.netns, self.address = name, netns, address

    @property
    def port(self) -> str:
        """The switch's end of this host's link (in the switch's namespace)."""
        return self.name

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.address}, netns {self.netns})"


class Lab:
    """Hosts named `names`, those in `hidden` not resolvable until `publish`ed."""

    def __init__(self, names: list[str], hidden: set[str] = frozenset(), prefix: str | None = None):
        if os.geteuid() != 0:
            raise LabError("test hosts need root (network namespaces, veth pairs, /etc/netns): run as root")
        for name in names:
            if not HOST_NAME.match(name):
                raise LabError(
                    f"host name {name!r}: use 1-15 lowercase letters, digits and '-', starting with a letter"
                )
        if len(set(names)) != len(names) or not set(hidden) <= set(names) or len(names) >= NETWORK.num_addresses - 2:
            raise LabError(
                f"hosts {names} (hidden {sorted(hidden)}): names must be distinct, hidden ones among them, "
                f"and at most {NETWORK.num_addresses - 3}"
            )
        self.prefix = prefix or "pmlh" + secrets.token_hex(2)
        self.switch = f"{self.prefix}-switch"
        self.hosts = {name: Host(name, f"{self.prefix}-{name}", str(NETWORK[i + 1])) for i, name in enumerate(names)}
        self.published = [name for name in names if name not in hidden]
        taken = _taken([self.switch, *(h.netns for h in self.hosts.values())])
        if taken:
            raise LabError(f"{taken} already exists; remove it or use another prefix than {self.prefix}")
        log = tempfile.NamedTemporaryFile(prefix=f"{self.prefix}-janitor-", suffix=".log", delete=False)
        log.close()
        self.janitor_log = pathlib.Path(log.name)
        # Its own session: a Ctrl-C or a kill of the test's process group leaves it to finish the cleanup.
        self.janitor = subprocess.Popen(
            [sys.executable, str(JANITOR), str(self.janitor_log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._closed = False
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _record(self, kind: str, what: str) -> None:
        """Tell the janitor before making it: what exists is then always known to it."""
        self.janitor.stdin.write(f"{kind} {what}\n".encode())
        self.janitor.stdin.flush()

    def _make(self) -> None:
        if not ETC_NETNS.exists():
            self._record("emptydir", str(ETC_NETNS))
            ETC_NETNS.mkdir()
        self._add_netns(self.switch)
        _ip("-n", self.switch, "link", "add", "name", BRIDGE, "type", "bridge")
        _ip("-n", self.switch, "link", "set", BRIDGE, "up")
        for host in self.hosts.values():
            self._add_netns(host.netns)
            folder = ETC_NETNS / host.netns
            self._record("dir", str(folder))
            folder.mkdir()
            (folder / "hosts").write_text(LOCALHOST + self._entries(self.published))
            (folder / "nsswitch.conf").write_text(NSSWITCH)
            (folder / "resolv.conf").write_text(RESOLV_CONF)
            # Made in the switch's namespace with its other end put straight into the host's:
            # the machine's own namespace never holds either end.
            _ip(
                "-n",
                self.switch,
                "link",
                "add",
                "name",
                host.port,
                "type",
                "veth",
                "peer",
                "name",
                LINK,
                "netns",
                host.netns,
            )
            _ip("-n", self.switch, "link", "set", host.port, "master", BRIDGE, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/{NETWORK.prefixlen}", "dev", LINK)
            _ip("-n", host.netns, "link", "set", LINK, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
        self._know_neighbours()

    def _know_neighbours(self) -> None:
        """Give every host every other's hardware address for good (permanent neighbour entries).

        A lost link is then silence both ways, as across a routed network, where the next hop
        always answers: no address resolution fails, so nothing ever turns a lost peer into a
        quick "host unreachable" error (which the kernel reports once 3 ARP probes go unanswered).
        """
        macs = {}
        for host in self.hosts.values():
            shown = subprocess.run(
                ["ip", "-n", host.netns, "-j", "link", "show", "dev", LINK], check=True, capture_output=True, text=True
            ).stdout
            macs[host.name] = json.loads(shown)[0]["address"]
        for host in self.hosts.values():
            lines = "".join(
                f"neigh replace {other.address} lladdr {macs[other.name]} nud permanent dev {LINK}\n"
                for other in self.hosts.values()
                if other is not host
            )
            done = subprocess.run(["ip", "-n", host.netns, "-batch", "-"], input=lines, capture_output=True, text=True)
            if done.returncode != 0:
                raise LabError(f"ip -n {host.netns} neigh replace: {done.stderr.strip()}")

    def _add_netns(self, name: str) -> None:
        self._record("netns", name)
        _ip("netns", "add", name)

    def _entries(self, names: list[str]) -> str:
        return "".join(f"{self.hosts[n].address} {n}\n" for n in names)

    def exec_argv(self, name: str) -> list[str]:
        """The command prefix that runs a program inside host `name`, with its hosts file."""
        return ["ip", "netns", "exec", self.hosts[name].netns]

    def publish(self, *names: str) -> None:
        """Make `names` resolvable on every host.

        `ip netns exec` bind-mounts the hosts file's inode over /etc/hosts, so the file is changed
        in place (appended to, so that a reader sees the old names or more, never fewer), not
        replaced: a new file would never be seen by the processes already running.
        """
        new = [n for n in names if n not in self.published]
        self.published += new
        for host in self.hosts.values():
            with open(ETC_NETNS / host.netns / "hosts", "a") as f:
                f.write(self._entries(new))

    def link_down(self, name: str) -> None:
        """Cut host `name` off the switch, as a pulled cable: packets either way are lost, silently
        (the host's own end loses its carrier, and the switch forwards nothing to a port that is down)."""
        _ip("-n", self.switch, "link", "set", self.hosts[name].port, "down")

    def link_up(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self.hosts[name].port, "up")

    def shape(self, name: str, mbit: float, burst_ms: float = 10.0) -> None:
        """Limit host `name`'s link to `mbit` Mbit/s each way.

        A tbf shapes what a device sends, so both ends get one: the host's end shapes its
        uploads, the switch's end what it receives. The bucket holds at least one 64 KiB segment
        (veth passes GSO segments whole) and `burst_ms` at the rate. What fits in a full bucket
        passes at the veth's own speed: with `burst_ms=0` a message of more than 64 KiB takes its
        size over the rate, as on a wire of that rate.
        """
        burst = max(64 * 1024, int(mbit * 1e6 / 8 * burst_ms / 1000))
        host = self.hosts[name]
        for netns, device in ((host.netns, LINK), (self.switch, host.port)):
            subprocess.run(
                [
                    "tc",
                    "-n",
                    netns,
                    "qdisc",
                    "replace",
                    "dev",
                    device,
                    "root",
                    "tbf",
                    "rate",
                    f"{mbit}mbit",
                    "burst",
                    str(burst),
                    "latency",
                    TBF_LATENCY,
                ],
                check=True,
                capture_output=True,
            )

    def unshape(self, name: str) -> None:
        host = self.hosts[name]
        for netns, device in ((host.netns, LINK), (self.switch, host.port)):
            subprocess.run(["tc", "-n", netns, "qdisc", "del", "dev", device, "root"], check=True, capture_output=True)

    def counters(self, name: str) -> dict[str, int]:
        """Bytes host `name` has sent and received over its link since it was made."""
        host = self.hosts[name]
        shown = subprocess.run(
            ["ip", "-n", host.netns, "-j", "-s", "link", "show", "dev", LINK],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        stats = json.loads(shown)[0]["stats64"]
        return {"sent": stats["tx"]["bytes"], "received": stats["rx"]["bytes"]}

    def close(self) -> None:
        """Remove everything the lab made; every process still inside a host is killed first."""
        if self._closed:
            return
        self._closed = True
        self.janitor.stdin.close()
        code = self.janitor.wait(timeout=120)
        said = self.janitor_log.read_text().strip()
        if code != 0:
            raise LabError(f"the janitor of {self.prefix} failed (exit code {code}): {said.splitlines()[-1:]}")
        self.janitor_log.unlink()


def leftovers(prefix: str) -> list[str]:
    """What exists of a lab with `prefix`: its network namespaces and folders (empty once it is closed)."""
    return sorted(
        [f"network namespace {p.name}" for p in RUN_NETNS.glob(prefix + "-*")]
        + [f"folder {p}" for p in ETC_NETNS.glob(prefix + "-*")]
    )


def _taken(netns_names: list[str]) -> str:
    """The first of the lab's names that exists already, as "network namespace X" or a folder."""
    for name in netns_names:
        if (RUN_NETNS / name).exists():
            return f"network namespace {name}"
        if (ETC_NETNS / name).exists():
            return f"folder {ETC_NETNS / name}"
    return ""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {done.stderr.strip()}")
