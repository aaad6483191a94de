"""The janitor of a lab of test hosts (tests/hosts/network.py): `python janitor.py LOG`.

It reads what the lab makes from its standard input, one line each, before it is made:
`netns NAME`, `dir PATH` (removed with its files), `emptydir PATH` (removed if empty). When that
pipe closes, because the lab is closed or because the process that made it ended in any way,
SIGKILL included, it removes all of it:

1. each namespace's name (`ip netns del`), so that nothing can enter it any more;
2. every process still inside one of them, with SIGKILL, found by the namespace's inode in
   /proc/PID/ns/net, until none is left (a namespace ends with its last process, and takes its
   links with it);
3. the folders.

It runs in a session of its own and ignores the signals a terminal or a killed test run send, so
that it always gets to the end. Only the standard library: it must run with nothing else working.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

KILL_DEADLINE = 60.0  # a process in uninterruptible sleep may take a moment to die
# A process that opened a namespace just before its name went (`ip netns exec` between open and
# setns) enters it a moment later: the namespaces must stay empty this long before they count as empty.
QUIET = 0.5


def main(log_path: str) -> int:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    made = [line.split(" ", 1) for line in sys.stdin.read().splitlines() if " " in line]
    with open(log_path, "a") as log:
        problems = clean(
            [what for kind, what in made if kind == "netns"],
            [what for kind, what in made if kind == "dir"],
            [what for kind, what in made if kind == "emptydir"],
            log,
        )
    return 1 if problems else 0


def clean(namespaces: list[str], folders: list[str], empty_folders: list[str], log) -> int:
    """Remove them all; return how many could not be removed (each said in `log`)."""
    problems = 0
    inodes = set()
    for name in reversed(namespaces):  # hosts before the switch they hang on
        pinned = pathlib.Path("/run/netns") / name
        try:
            inodes.add(os.stat(pinned).st_ino)  # the bind mount of the namespace: its nsfs inode
        except FileNotFoundError:
            continue  # recorded, then never made
        done = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"ip netns del {name}: {done.stderr.strip()}", file=log)
            problems += 1
    deadline = time.monotonic() + KILL_DEADLINE
    inside, empty_since = [], time.monotonic()
    while time.monotonic() < deadline and (inside or time.monotonic() - empty_since < QUIET):
        inside = processes_in(inodes)
        for pid in inside:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if inside:
            empty_since = time.monotonic()
        time.sleep(0.05)
    if inside:
        print(f"processes still inside the namespaces after {KILL_DEADLINE:.0f}s: {inside}", file=log)
        problems += 1
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        if os.path.exists(folder):
            print(f"could not remove {folder}", file=log)
            problems += 1
    for folder in empty_folders:
        try:
            os.rmdir(folder)
        except OSError:
            pass  # another lab still uses it, or it was not empty to begin with
    return problems


def processes_in(inodes: set[int]) -> list[int]:
    """The live processes whose network namespace is one of `inodes`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{entry.name}/ns/net")  # "net:[4026532317]"; gone once a process has exited
        except OSError:
            continue
        if int(link[5:-1]) in inodes:
            found.append(int(entry.name))
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
