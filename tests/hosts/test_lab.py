"""The test hosts themselves (tests/hosts/network.py): names, links, rates, counters, and that
nothing of them is left, however the process that made them ends. No TensorFlow here."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from conftest import alive, wait_for

from hosts.conftest import TESTS
from hosts.network import Lab, LabError, leftovers

pytestmark = pytest.mark.hosts

# Run inside a host: serve TCP on a port; each connection's bytes are counted and the count
# written back once the sender has finished.
SINK = r"""
import socket, sys
server = socket.create_server(("", int(sys.argv[1])))
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        n = 0
        while data := conn.recv(1 << 20):
            n += len(data)
        conn.sendall(str(n).encode())
"""
# Run inside a host: send N MiB to host:port; print the Mbit/s from first byte to the sink's count.
SEND = r"""
import socket, sys, time
host, port, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with socket.create_connection((host, port), timeout=30) as conn:
    began = time.monotonic()
    block = b"x" * (1 << 20)
    for _ in range(mib):
        conn.sendall(block)
    conn.shutdown(socket.SHUT_WR)
    assert int(conn.recv(64)) == mib << 20
    print(mib * 8 * 1.048576 / (time.monotonic() - began))
"""
# Run inside a host: try to connect; print "connected", "refused", "timeout" or "unreachable".
CONNECT = r"""
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as err:
    print("unreachable" if err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else repr(err))
"""


def inside(lab: Lab, host: str, program: str, *args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        [*lab.exec_argv(host), sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def start_sink(lab: Lab, host: str, port: int) -> subprocess.Popen:
    sink = subprocess.Popen(
        [*lab.exec_argv(host), sys.executable, "-c", SINK, str(port)], stdout=subprocess.PIPE, text=True
    )
    assert sink.stdout.readline().strip() == "listening"
    return sink


def sleeping_inside(pid: int) -> bool:
    """Has `ip netns exec` entered the host and become the sleeper it runs?"""
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0")
    except OSError:
        return False


def root_links() -> list[str]:
    """The links of the machine's own network namespace."""
    shown = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip() for line in shown.splitlines())


def test_hosts_reach_each_other_by_name_and_nothing_else(as_root):
    before = root_links()
    with Lab(["alpha", "beta"]) as lab:
        assert root_links() == before  # the switch and every link live in the lab's own namespaces
        assert inside(lab, "alpha", "import socket; print(socket.gethostbyname('beta'))") == lab.hosts["beta"].address
        sink = start_sink(lab, "beta", 7000)
        try:
            assert inside(lab, "alpha", CONNECT, "beta", "7000", "5") == "connected"
            # No route leaves the subnet: an address outside fails at once, nothing is sent out.
            assert inside(lab, "alpha", CONNECT, "192.0.2.1", "80", "5") == "unreachable"
        finally:
            sink.kill()
    assert leftovers(lab.prefix) == []


def test_a_name_published_late_resolves_in_processes_already_running(as_root):
    """The hosts file is changed in place: `ip netns exec` mounted its inode over /etc/hosts."""
    poll = (
        "import socket, time\n"
        "while True:\n"
        "    try:\n"
        "        print(socket.gethostbyname('late'), flush=True); break\n"
        "    except socket.gaierror:\n"
        "        time.sleep(0.1)\n"
    )
    with Lab(["early", "late"], hidden={"late"}) as lab:
        assert inside(lab, "early", CONNECT, "late", "1", "5").startswith("gaierror")
        waiting = subprocess.Popen(
            [*lab.exec_argv("early"), sys.executable, "-c", poll], stdout=subprocess.PIPE, text=True
        )
        lab.publish("late")
        assert waiting.communicate(timeout=30)[0].strip() == lab.hosts["late"].address


def test_a_link_down_drops_packets_silently_until_it_is_up_again(as_root):
    with Lab(["alpha", "beta"]) as lab:
        sink = start_sink(lab, "beta", 7000)
        try:
            lab.link_down("beta")
            assert inside(lab, "alpha", CONNECT, "beta", "7000", "2") == "timeout"  # not refused: silence
            assert inside(lab, "alpha", CONNECT, "beta", "7000", "4") == "timeout"  # never "unreachable"
            lab.link_up("beta")
            assert inside(lab, "alpha", CONNECT, "beta", "7000", "10") == "connected"
        finally:
            sink.kill()


def test_a_shaped_link_carries_its_rate_each_way_and_counts_the_bytes(as_root):
    mib, rate = 12, 100
    with Lab(["alpha", "beta"]) as lab:
        sinks = [start_sink(lab, "alpha", 7000), start_sink(lab, "beta", 7000)]
        try:
            free = float(inside(lab, "alpha", SEND, "beta", "7000", str(mib)))
            before = lab.counters("beta")
            lab.shape("beta", rate)
            uploads = float(inside(lab, "beta", SEND, "alpha", "7000", str(mib)))
            downloads = float(inside(lab, "alpha", SEND, "beta", "7000", str(mib)))
            after = lab.counters("beta")
            lab.unshape("beta")
            again = float(inside(lab, "alpha", SEND, "beta", "7000", str(mib)))
        finally:
            for sink in sinks:
                sink.kill()
    print(
        f"measured: {free:.0f} Mbit/s free, {uploads:.0f} up and {downloads:.0f} down at tbf {rate} Mbit/s, "
        f"{again:.0f} once unshaped"
    )
    for shaped in (uploads, downloads):
        assert 0.5 * rate < shaped < 1.15 * rate
    assert min(free, again) > 3 * rate
    for way in ("sent", "received"):  # the payload each way, plus headers and acknowledgements
        assert mib << 20 <= after[way] - before[way] < 1.1 * (mib << 20)


def held_back(lab: Lab, host: str) -> int:
    """How many times the shaper of what `host` receives held a packet back for want of tokens."""
    shown = subprocess.run(
        ["tc", "-n", lab.switch, "-s", "-j", "qdisc", "show", "dev", lab.hosts[host].port],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(shown)[0]["overlimits"]


def test_without_a_burst_a_message_takes_its_size_over_the_rate(as_root):
    """1 MiB fits in the default bucket of a 1 Gbit/s link (10 ms, 1.25 MB): the shaper never holds
    it back. With burst_ms=0 it does, and the message takes its size over the rate, as on a wire."""
    rate = 1000
    with Lab(["alpha", "beta"]) as lab:
        sink = start_sink(lab, "beta", 7000)
        try:
            lab.shape("beta", rate)
            inside(lab, "alpha", SEND, "beta", "7000", "1")
            bursting = held_back(lab, "beta")
            lab.shape("beta", rate, burst_ms=0)
            wire = float(inside(lab, "alpha", SEND, "beta", "7000", "1"))
            wired = held_back(lab, "beta") - bursting
        finally:
            sink.kill()
    print(f"measured: held back {bursting} times with the default bucket; {wired} times and {wire:.0f} Mbit/s without")
    assert bursting == 0 < wired
    assert wire < 1.1 * rate


def test_a_lab_refuses_a_name_that_exists_and_leaves_it_alone(as_root):
    prefix = "pmlh" + os.urandom(2).hex()
    taken = f"{prefix}-beta"
    subprocess.run(["ip", "netns", "add", taken], check=True)
    try:
        with pytest.raises(LabError, match=f"network namespace {taken} already exists"):
            Lab(["alpha", "beta"], prefix=prefix)
        assert leftovers(prefix) == [f"network namespace {taken}"]  # its own, untouched; nothing made
    finally:
        subprocess.run(["ip", "netns", "del", taken], check=True)


def test_closing_a_lab_kills_what_runs_inside_and_removes_everything(as_root):
    before = root_links()
    lab = Lab(["alpha", "beta"])
    sleepers = [subprocess.Popen([*lab.exec_argv(h), "sleep", "600"], start_new_session=True) for h in lab.hosts]
    wait_for(lambda: all(sleeping_inside(s.pid) for s in sleepers), 30, "the sleepers to enter their hosts")
    assert len(leftovers(lab.prefix)) == 5  # the switch and two hosts, and two folders
    lab.close()
    assert [s.wait(timeout=10) for s in sleepers] == [-signal.SIGKILL] * 2
    assert leftovers(lab.prefix) == []
    assert root_links() == before


# Makes a lab whose hosts run a sleeper each, says so, and waits to be killed.
MAKER = r"""
import subprocess, sys, time
from hosts.network import Lab
lab = Lab(["alpha", "beta"])
pids = [subprocess.Popen([*lab.exec_argv(h), "sleep", "600"], start_new_session=True).pid for h in lab.hosts]
print(lab.prefix, lab.janitor.pid, *pids, flush=True)
time.sleep(600)  # for the test's SIGKILL
"""


def test_sigkill_of_the_process_that_made_a_lab_leaves_nothing(as_root):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    maker = subprocess.Popen([sys.executable, "-c", MAKER], stdout=subprocess.PIPE, text=True, env=env)
    prefix, janitor, *sleepers = maker.stdout.readline().split()
    wait_for(lambda: all(sleeping_inside(int(pid)) for pid in sleepers), 30, "the sleepers to enter their hosts")
    assert len(leftovers(prefix)) == 5
    maker.kill()
    maker.wait()
    wait_for(lambda: not alive(int(janitor)), 60, "the janitor to finish")
    assert leftovers(prefix) == []
    assert [pid for pid in sleepers if alive(int(pid))] == []
