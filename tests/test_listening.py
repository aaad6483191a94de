"""Issue 12, item 10: a local job is not open to the machine's networks.

TensorFlow's gRPC servers listen on 0.0.0.0 whatever they are told (grpc_server_lib.cc), without
authentication. A local job therefore runs in a network namespace of its own (deploy/netns.py),
and the chief's state endpoint binds its loopback host. Each test probes the ports from another
network namespace that it makes, joined to this one by a veth pair whose addresses it chooses, as
a machine on the same network would; every namespace and link is removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import alive, pmlctl, start_pmlctl, wait_for

from deploy import local, netns
from deploy import supervisor as supervision
from deploy.spec import JobSpec
from pml_trainer import chief_state
from pml_trainer.tf_config import listen_host

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip"), reason="making a probe network namespace needs root and iproute2"
)


class Probe:
    """A network namespace holding one end of a veth pair; this namespace holds the other end,
    at `address`. From the probe, `address` is this machine seen from its network."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.ns, self.link = f"pml-probe-{tag}", f"pmlp{tag}"
        octet = int(tag[:2], 16)
        self.address, self.peer = f"10.213.{octet}.1", f"10.213.{octet}.2"
        peer = self.peer
        self._made: list[list[str]] = []
        self._ip("netns", "add", self.ns, undo=["netns", "del", self.ns])
        self._ip(
            "link", "add", self.link, "type", "veth", "peer", "name", self.link + "p", undo=["link", "del", self.link]
        )
        self._ip("link", "set", self.link + "p", "netns", self.ns)
        self._ip("addr", "add", f"{self.address}/30", "dev", self.link)
        self._ip("link", "set", self.link, "up")
        for args in (
            ["addr", "add", f"{peer}/30", "dev", self.link + "p"],
            ["link", "set", self.link + "p", "up"],
            ["link", "set", "lo", "up"],
        ):
            self._ip("-n", self.ns, *args)

    def _ip(self, *args: str, undo: list[str] | None = None) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)
        if undo:
            self._made.append(undo)

    def reaches(self, port: int) -> bool:
        """Does a TCP connection from the probe to this machine's `address`:`port` succeed?"""
        code = f"import socket; socket.create_connection(({self.address!r}, {port}), timeout=5).close()"
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", code], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0 or "Connection refused" in done.stderr, done.stderr  # refused: nothing there
        return done.returncode == 0

    def remove(self) -> None:
        for undo in reversed(self._made):
            subprocess.run(["ip", *undo], capture_output=True, timeout=30)
        assert self.ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert self.link not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout


@pytest.fixture
def probe():
    made = Probe()
    try:
        yield made
    finally:
        made.remove()


def listening_everywhere() -> socket.socket:
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen()
    return s


def test_listen_host_keeps_loopback_and_opens_names_in_pods():
    assert [listen_host(h) for h in ("127.0.0.1", "localhost", "[::1]", "127.0.0.2")] == [
        "127.0.0.1",
        "127.0.0.1",
        "::1",
        "127.0.0.2",
    ]
    assert [listen_host(h) for h in ("job-chief-0", "10.0.0.7", "job-chief-0.ns.svc")] == ["", "", ""]


@needs_root
def test_the_chiefs_state_endpoint_of_a_local_job_is_not_reachable_from_the_network(probe):
    with listening_everywhere() as witness:  # the probe does reach what listens on every interface
        assert probe.reaches(witness.getsockname()[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chief = chief_state.StateServer(port, set(), host="127.0.0.1")
    try:
        assert chief_state.fetch_state("127.0.0.1", port, "test") == {"state": chief_state.TRAINING, "step": 0}
        assert not probe.reaches(port)
    finally:
        chief.finish(chief_state.DONE, linger=0)


# A stand-in for a task, without TensorFlow: it listens on every interface as TensorFlow's servers
# do, fetches from the storage server it is given, writes what it saw, and ends once told to.
TASK = r"""
import json, pathlib, socket, sys, urllib.request
out, storage, port = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
server = socket.socket(); server.bind(("0.0.0.0", port)); server.listen()
seen = {"storage": urllib.request.urlopen(storage, timeout=10).read().decode(),
        "links": sorted(name for _, name in socket.if_nameindex())}
(out / "seen.part").write_text(json.dumps(seen)); (out / "seen.part").rename(out / "seen.json")
server.accept()  # the test's "you may go"
"""


class Storage(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"stored")

    def log_message(self, *args):
        pass


@needs_root
def test_a_local_jobs_tasks_listen_only_inside_its_namespace_and_still_reach_local_storage(
    tmp_path, probe, monkeypatch
):
    monkeypatch.delenv(netns.MODE_VARIABLE, raising=False)
    storage = ThreadingHTTPServer(("127.0.0.1", 0), Storage)
    threading.Thread(target=storage.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{storage.server_address[1]}/object"
    spec = JobSpec(name="iso", replicas={"workers": 0, "ps": 0}, env={"AWS_ENDPOINT_URL": url})
    plan = local.plan(spec, tmp_path)
    (chief,) = plan.tasks
    port = int(chief.address.rpartition(":")[2])
    chief.argv = [sys.executable, "-c", TASK, str(tmp_path), url, str(port)]
    supervisor = supervision.LocalSupervisor(plan, tmp_path, max_restarts=0, verbose=False)
    monkeypatch.setattr(supervision.signal, "signal", lambda *_: None)  # it runs in a thread here, not in main
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("code", supervisor.run()), daemon=True)
    thread.start()
    try:
        seen = json.loads(
            wait_for(
                lambda: (tmp_path / "seen.json").is_file() and (tmp_path / "seen.json").read_text(),
                timeout=60,
                what="the task to listen and fetch",
            )
        )
        assert not probe.reaches(port)  # before issue 12: reached, as a probe reaches what listens on 0.0.0.0
        # Storage relayed. No interface but loopback, and slirp4netns's tap0 where it is installed:
        # it connects out for the tasks, and forwards nothing in.
        assert seen["storage"] == "stored" and set(seen["links"]) <= {"lo", "tap0"} and "lo" in seen["links"]
        pid = chief.proc.pid
        assert f"pid={pid}," not in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        inside = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-ltnH"], capture_output=True, text=True)
        assert f"0.0.0.0:{port} " in inside.stdout  # it does listen on every interface: of its namespace
        subprocess.run(
            [
                "nsenter",
                "-t",
                str(pid),
                "-n",
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(('127.0.0.1', {port})).close()",
            ],
            check=True,
        )
        thread.join(timeout=60)
        assert outcome == {"code": 0} and not alive(pid)
        assert json.loads((tmp_path / "job.json").read_text())["details"]["network"] == "private"
    finally:
        storage.shutdown()
        if chief.proc and chief.proc.poll() is None:
            chief.proc.kill()


@needs_root
@pytest.mark.skipif(
    not shutil.which("slirp4netns"), reason="slirp4netns is not installed (make test installs it as root)"
)
def test_the_namespace_reaches_storage_beyond_this_machine_and_nothing_reaches_in(probe):
    """A server in the probe namespace stands for storage on the network: the job's namespace
    connects out to it (slirp4netns), while the probe still reaches nothing in the namespace."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", probe.ns, sys.executable, "-c", REMOTE, probe.peer], stdout=subprocess.PIPE, text=True
    )
    namespace = netns.Namespace([])
    try:
        port = int(server.stdout.readline())
        assert namespace.outbound == "through slirp4netns"
        code = (
            f"import socket, urllib.request; s = socket.create_server(('0.0.0.0', 0)); print(s.getsockname()[1]); "
            f"print(urllib.request.urlopen('http://{probe.peer}:{port}/', timeout=10).read().decode(), flush=True); "
            "input()"
        )
        task = subprocess.Popen(
            [sys.executable, "-c", code],
            preexec_fn=namespace.enter,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        listening, answer = int(task.stdout.readline()), task.stdout.readline().strip()
        assert answer == "remote"
        assert not probe.reaches(listening)
        task.communicate("\n", timeout=30)
    finally:
        namespace.close()
        server.kill()
        server.wait()


REMOTE = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Remote(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "6"); self.end_headers(); self.wfile.write(b"remote")
server = HTTPServer((sys.argv[1], 0), Remote)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@needs_root
def test_a_loopback_name_server_is_relayed_into_the_namespace(tmp_path):
    """systemd-resolved listens on 127.0.0.53: the namespace's resolver must reach it (UDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as resolver:
        resolver.bind(("127.0.0.1", 0))
        port = resolver.getsockname()[1]
        namespace = netns.Namespace([], [("127.0.0.1", port)], outbound=False)
        code = (
            f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10); "
            f"s.sendto(b'query', ('127.0.0.1', {port})); print(s.recv(100).decode())"
        )
        try:
            task = subprocess.Popen(
                [sys.executable, "-c", code], preexec_fn=namespace.enter, stdout=subprocess.PIPE, text=True
            )
            query, sender = resolver.recvfrom(100)
            resolver.sendto(b"answer to " + query, sender)
            assert task.communicate(timeout=30)[0].strip() == "answer to query"
        finally:
            namespace.close()
    (tmp_path / "resolv.conf").write_text("# a comment\nnameserver 127.0.0.53\nnameserver 10.1.2.3\nsearch x\n")
    assert netns.loopback_name_servers(str(tmp_path / "resolv.conf")) == ["127.0.0.53"]


class Named(BaseHTTPRequestHandler):
    """Answers with the port it serves, so that each relay is seen to reach its own endpoint."""

    def do_GET(self):
        body = str(self.server.server_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _namespaces_in_use() -> set[str]:
    """The network namespaces any process is in or holds open (`net:[inode]`)."""
    seen = set()
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # a process may end while it is looked at
            for link in [proc / "ns" / "net", *(proc / "fd").iterdir()]:
                with contextlib.suppress(OSError):
                    seen.add(os.readlink(link))
    return {s for s in seen if s.startswith("net:[")}


@needs_root
def test_two_loopback_storage_endpoints_are_both_relayed_and_nothing_is_left_behind():
    """Issue 25, defect 9: an S3 endpoint and a GCS emulator on 127.0.0.1 at once. The helper kept
    only its listeners' numbers, so all sockets but the last were closed before being sent, and the
    namespace could not be made (EBADF)."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Named) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    ports = [server.server_address[1] for server in servers]
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    named = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    threads = set(threading.enumerate())
    try:
        namespace = netns.Namespace([("127.0.0.1", port) for port in ports], outbound=False)
        ours = os.readlink(f"/proc/self/fd/{namespace.handles[0]}")
        code = (
            "import socket, sys, urllib.request; "
            "print(sorted(name for _, name in socket.if_nameindex())); "
            "[print(urllib.request.urlopen(f'http://127.0.0.1:{p}/', timeout=10).read().decode()) for p in sys.argv[1:]]"
        )
        try:
            task = subprocess.Popen(
                [sys.executable, "-c", code, *map(str, ports)],
                preexec_fn=namespace.enter,
                stdout=subprocess.PIPE,
                text=True,
            )
            out = task.communicate(timeout=30)[0].splitlines()
            assert task.returncode == 0
            assert out == ["['lo']", *map(str, ports)]  # inside: loopback only, and both endpoints answer
        finally:
            namespace.close()
        # The namespace had no name and no link of its own; once its handles are closed and its one
        # task gone, no process is in it or holds it, so the kernel has freed it.
        assert ours not in _namespaces_in_use()
        assert subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout == links
        assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == named
        wait_for(lambda: set(threading.enumerate()) <= threads, timeout=10, what="the relays' threads to end")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@needs_root
@pytest.mark.slow
def test_a_running_ps_job_is_unreachable_from_the_network_and_listens_on_no_host_interface(
    tmp_path, pml_home, probe, monkeypatch
):
    """The bar of issue 12: while a local ps job trains, none of its processes listens on this
    machine's interfaces (ss -ltnp), and none of its ports answers from another namespace."""
    monkeypatch.delenv(netns.MODE_VARIABLE, raising=False)
    model_dir = tmp_path / "model"
    job = start_pmlctl(
        "submit",
        "--name",
        "exposed",
        "--workers",
        "1",
        "--ps",
        "1",
        "--epochs",
        "50",
        "--train-examples",
        "20000",
        "--batch-size",
        "128",
        "--model-dir",
        str(model_dir),
        cwd=tmp_path,
    )
    try:
        wait_for(lambda: (model_dir / "metrics.jsonl").is_file(), timeout=300, what="the first epoch", proc=job)
        state = json.loads((pml_home / "jobs" / "exposed" / "job.json").read_text())
        pids = {t["pid"] for t in state["tasks"]}
        ports = {int(t["where"].rpartition(":")[2]) for t in state["tasks"]}
        chief = next(t for t in state["tasks"] if t["role"] == "chief")
        ports.add(int(chief["where"].rpartition(":")[2]) + 1)  # the chief's state endpoint
        # TensorFlow does listen on every interface (gRPC makes its 0.0.0.0 a dual-stack [::], which ss
        # shows as *:PORT), and the chief's endpoint on 127.0.0.1: inside the job's namespace.
        inside = subprocess.run(
            ["nsenter", "-t", str(chief["pid"]), "-n", "ss", "-ltnH"], capture_output=True, text=True, check=True
        ).stdout
        assert {f"*:{int(t['where'].rpartition(':')[2])}" for t in state["tasks"]} <= set(inside.split())
        assert f"127.0.0.1:{int(chief['where'].rpartition(':')[2]) + 1}" in inside.split()
        assert [p for p in sorted(ports) if probe.reaches(p)] == []  # before issue 12: every one of them
        host_view = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        assert [line for line in host_view.splitlines() if any(f"pid={pid}," in line for pid in pids)] == []
        assert all(alive(pid) for pid in pids)  # all of that while the job runs
    finally:
        job.send_signal(signal.SIGINT)
        output, _ = job.communicate(timeout=180)
    assert job.returncode == 130, output[-3000:]
    assert [pid for pid in pids if alive(pid)] == []


def test_the_docker_target_publishes_no_port_and_keeps_each_task_in_its_container(tmp_path, pml_home):
    """Containers listen in their own namespaces on the job's network; nothing on the host's
    interfaces (a published port, or the host's network) would open them to other machines."""
    result = pmlctl(
        "submit",
        "-t",
        "docker",
        "--dry-run",
        "--name",
        "closed",
        "--workers",
        "2",
        "--ps",
        "1",
        cwd=tmp_path,
        env={**os.environ, "PML_DOCKER": "docker"},
    )
    assert result.returncode == 0, result.stderr
    runs = [line.split() for line in result.stdout.splitlines() if line.startswith("  docker run ")]
    assert len(runs) == 4
    for argv in runs:
        assert not {"-p", "-P", "--publish", "--publish-all"} & set(argv)
        assert not [a for a in argv if a.startswith(("--publish=", "--network=host", "--net=host"))]
        assert argv[argv.index("--network") + 1] == "closed"
