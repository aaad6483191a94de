"""A local job's own network namespace, so that no TensorFlow server of it is open to a network.

TensorFlow cannot be told where to listen: GrpcServer::Init in TensorFlow's
tensorflow/core/distributed_runtime/rpc/grpc_server_lib.cc binds
`builder.AddListeningPort(strings::StrCat("0.0.0.0:", requested_port), ...)` whatever host the
cluster spec gives (that host only tells the other tasks how to reach this one), with
InsecureServerCredentials: no authentication. ServerDef has a `port` override but no address, and
no environment variable changes it (TF_GRPC_REUSE_PORT only sets SO_REUSEPORT). Anyone who reaches
such a port can run graph ops on the host, reading and writing its files.

So every task of a local job runs in one network namespace made for the job, where the only
interface is loopback: the tasks reach each other at 127.0.0.1 as before, and their 0.0.0.0
listeners are unreachable from anywhere else, this machine's other network namespaces included.
The namespace is made by a short-lived helper process (`unshare(2)` with CLONE_NEWNET, and
CLONE_NEWUSER as well when not root, mapping the user to itself), which sends back a handle of the
namespace and any listening sockets opened inside it, then exits. The supervisor holds the
handles; each task enters the namespace (setns(2)) between fork and exec, so its pid is the
supervisor's child as before. The namespace ends with the last of them: nothing to clean up.

Storage on this machine stays reachable: for each loopback `host:port` named in the tasks'
environment or trainer flags (an S3 endpoint, STORAGE_EMULATOR_HOST, a download URL...), the
supervisor listens at the same address inside the namespace and relays each connection to that
address outside it. Storage elsewhere (gs:// and s3:// on the internet, a LAN server, a dataset
download) is reached through slirp4netns when it is installed (Debian package slirp4netns; rootless
Podman and Docker use it the same way): a user-space TCP/IP stack that connects out from this
machine's namespace on the tasks' behalf, and forwards nothing in (no port is added through its
API), started with --disable-host-loopback so that 127.0.0.1 outside stays reached only through
the relays above. A loopback name server in /etc/resolv.conf (systemd-resolved's 127.0.0.53) is
relayed over UDP likewise. Without slirp4netns the job reaches only the relayed services; a job
that needs more without it runs with PML_LOCAL_NETWORK=host (see `mode`), which keeps its tasks in
the machine's own namespace and says what that exposes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

from pml_trainer.errors import BadInput

CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
# loopback host:port in a URL or a bare address: 127.x.y.z, localhost, [::1]
LOOPBACK = re.compile(r"(?<![\w.-])(127(?:\.\d{1,3}){3}|localhost|\[::1\]):(\d{1,5})(?!\d)")
MODE_VARIABLE = "PML_LOCAL_NETWORK"

# Run by the helper: a fresh, single-threaded interpreter, as unshare(CLONE_NEWUSER) requires.
# argv: the fd of the socket where the namespace handles and listening sockets go, then, per
# relay, tcp|udp host port.
_HELPER = r"""
import ctypes, fcntl, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.getuid(), os.getgid()
if libc.unshare(0x40000000 | (0x10000000 if uid else 0)) != 0:
    sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
if uid:  # the user stays itself inside: no root there, only the right to set up this namespace
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(probe, 0x8913, struct.pack("16sH14x", b"lo", 0))[:18])[1]  # SIOCGIFFLAGS
fcntl.ioctl(probe, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
handles = [os.open("/proc/self/ns/net", os.O_RDONLY)] + ([os.open("/proc/self/ns/user", os.O_RDONLY)] if uid else [])
# The socket objects, not their numbers: a socket object closes its fd when collected, so keeping
# only fileno() let rebinding the loop variable close each listener but the last, and send_fds
# failed with EBADF as soon as there were two relays.
listeners = []
for kind, host, port in zip(sys.argv[2::3], sys.argv[3::3], sys.argv[4::3]):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                      socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    s.bind((host, int(port)))
    if kind == "tcp":
        s.listen(64)
    listeners.append(s)
socket.send_fds(socket.socket(fileno=int(sys.argv[1])), [str(len(handles)).encode()],
                handles + [s.fileno() for s in listeners])
"""


def mode() -> str:
    """ "private" (the default: a namespace of the job's own) or "host" (the machine's own, opt-in)."""
    value = os.environ.get(MODE_VARIABLE, "private")
    if value not in ("private", "host"):
        raise BadInput(f"{MODE_VARIABLE}={value}: use private (default) or host")
    return value


def loopback_endpoints(texts, exclude_ports: set[int]) -> list[tuple[str, int]]:
    """The loopback (host, port) pairs named in `texts`, less the job's own ports."""
    found = set()
    for text in texts:
        for host, port in LOOPBACK.findall(text):
            if 0 < int(port) < 65536 and int(port) not in exclude_ports:
                host = host.strip("[]")
                found.add(("127.0.0.1" if host == "localhost" else host, int(port)))
    return sorted(found)


def loopback_name_servers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    """The name servers of `resolv_conf` on a loopback address (unreachable from the namespace)."""
    try:
        lines = [line.split() for line in pathlib.Path(resolv_conf).read_text().splitlines()]
    except OSError:
        return []
    servers = [words[1] for words in lines if len(words) > 1 and words[0] == "nameserver"]
    return [s for s in servers if LOOPBACK.match(f"{s}:53") or s == "::1"]


class Namespace:
    """A network namespace with loopback only, relays to the loopback `endpoints` (TCP) and
    `datagram_endpoints` (UDP: name servers) outside it, and with `outbound`, slirp4netns when
    installed."""

    def __init__(
        self, endpoints: list[tuple[str, int]], datagram_endpoints: list[tuple[str, int]] = (), outbound: bool = True
    ):
        self.endpoints = endpoints
        relays = [("tcp", *e) for e in endpoints] + [("udp", *e) for e in datagram_endpoints]
        ours, theirs = socket.socketpair()
        with ours:
            helper = subprocess.Popen(
                [sys.executable, "-c", _HELPER, str(theirs.fileno()), *(str(part) for r in relays for part in r)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            theirs.close()
            message, fds, _, _ = socket.recv_fds(ours, 16, 2 + len(relays))
            problem = helper.communicate(timeout=60)[1].decode(errors="replace").strip()
        if helper.returncode != 0 or not fds:
            for fd in fds:
                os.close(fd)
            reason = problem.splitlines()[-1] if problem else f"exit code {helper.returncode}"
            # A setting of this machine the user changes (or opts out of): retrying never helps.
            raise BadInput(
                f"cannot give the job a network namespace of its own ({reason}); TensorFlow's servers listen "
                "on every interface without authentication, so a local job runs in one. Run pmlctl as root or "
                "allow user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu "
                f"kernel.apparmor_restrict_unprivileged_userns=0), or set {MODE_VARIABLE}=host to accept the "
                "exposure on a network you trust"
            )
        count = int(message)
        self.handles, listeners = fds[:count], fds[count:]
        self._closed = False
        self._listeners = [socket.socket(fileno=fd) for fd in listeners]
        for (kind, host, port), listener in zip(relays, self._listeners, strict=False):
            serve = self._serve if kind == "tcp" else _answer_datagrams
            threading.Thread(target=serve, args=(listener, host, port), daemon=True).start()
        self._slirp: subprocess.Popen | None = None
        self.outbound = self._connect_outside() if outbound else "not asked for"

    def _connect_outside(self) -> str:
        """Start slirp4netns for connections out of the namespace; say how it went."""
        if not shutil.which("slirp4netns"):
            return "slirp4netns is not installed"
        ready, told = os.pipe()
        # slirp4netns exits when this pipe closes: at close(), or when the supervisor dies, even by SIGKILL.
        self._stop, self._keep = os.pipe()
        net, *user = self.handles
        argv = [
            "slirp4netns",
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            f"--ready-fd={told}",
            f"--exit-fd={self._stop}",
            "--netns-type=path",
            *(f"--userns-path=/proc/self/fd/{fd}" for fd in user),
            f"/proc/self/fd/{net}",
            "tap0",
        ]
        said = tempfile.TemporaryFile()  # not a pipe: a long job's messages would fill it and stall slirp4netns
        self._slirp = subprocess.Popen(
            argv, pass_fds=(told, self._stop, *self.handles), stdin=subprocess.DEVNULL, stdout=said, stderr=said
        )
        os.close(told)
        os.close(self._stop)
        with os.fdopen(ready, "rb") as pipe:
            up = pipe.read(1) == b"1"  # written once tap0 is configured; nothing if slirp4netns failed
        if up:
            return "through slirp4netns"
        self._slirp.wait(timeout=30)
        said.seek(0)
        problem = said.read().decode(errors="replace").strip().splitlines()
        os.close(self._keep)
        self._slirp = None
        return f"slirp4netns failed ({problem[0] if problem else 'no reason given'})"

    def enter(self) -> None:
        """In a child between fork and exec: join the namespace (the user namespace first)."""
        libc = ctypes.CDLL(None, use_errno=True)
        for fd, kind in zip(reversed(self.handles), (CLONE_NEWUSER, CLONE_NEWNET)[-len(self.handles) :], strict=False):
            if libc.setns(fd, kind) != 0:
                raise OSError(ctypes.get_errno(), "setns: " + os.strerror(ctypes.get_errno()))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for fd in self.handles:
                os.close(fd)
            if self._slirp:
                os.close(self._keep)
                self._slirp.wait()
            for listener in self._listeners:  # wakes its accept() and so ends its thread (sweeps run many jobs)
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RDWR)
                listener.close()

    def _serve(self, listener: socket.socket, host: str, port: int) -> None:
        while True:
            try:
                inside, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_relay, args=(inside, host, port), daemon=True).start()


def _answer_datagrams(inside: socket.socket, host: str, port: int) -> None:
    """Relay each datagram (a DNS query) to `host:port` outside, and its answer back."""

    def ask(query: bytes, sender) -> None:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as outside:
            outside.settimeout(10)
            try:
                outside.sendto(query, (host, port))
                inside.sendto(outside.recv(1 << 16), sender)
            except OSError:
                pass  # the resolver asks again, or tries its next server

    while True:
        try:
            query, sender = inside.recvfrom(1 << 16)
        except OSError:
            return
        threading.Thread(target=ask, args=(query, sender), daemon=True).start()


def _relay(inside: socket.socket, host: str, port: int) -> None:
    """One connection from the namespace to `host:port` in the supervisor's own namespace."""
    with inside:
        try:
            outside = socket.create_connection((host, port), timeout=30)
        except OSError:
            return  # the caller sees the connection closed, as by a server that is down
        with outside:
            outside.settimeout(None)
            back = threading.Thread(target=_pump, args=(outside, inside), daemon=True)
            back.start()
            _pump(inside, outside)
            back.join()


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy until `source` ends, then pass the end on; on an error, end both ways at once."""
    try:
        while data := source.recv(1 << 16):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (source, target):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
