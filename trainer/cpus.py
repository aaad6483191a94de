"""How many threads each of TensorFlow's ops may use: this task's share of the CPUs.

TensorFlow sizes its intra-op pool to the CPUs the process may be scheduled on, and nothing
else: `NumSchedulableCPUs` counts `sched_getaffinity` (xla/tsl/platform/default/port.cc), which
`EigenThreadPoolInfo` takes as its default (tensorflow/core/common_runtime/local_device.cc). It
knows neither a container's CPU limit nor the other tasks of the job on the same machine. A local
ps job runs 4 tasks on this 2-core machine, each with 2 threads per op: they handed every op of a
step between threads that then waited for a core, and sizing each task's pool to its share ran
the job 1.10x faster (bench/RESULTS.md, "Threads per task").

Free of TensorFlow: it only reads /proc and /sys.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Optional

from trainer.tf_config import TFConfig, listen_host

# Set by a target that runs the job's tasks on one machine under names of their own (the Docker
# target's containers), where addresses cannot tell.
TASKS_ON_MACHINE = "PML_TASKS_ON_MACHINE"
CGROUP = pathlib.Path("/sys/fs/cgroup")
PROC_CGROUP = pathlib.Path("/proc/self/cgroup")


def intra_op_threads(requested: int, cfg: TFConfig) -> tuple[int, str]:
    """Threads per op, and why that many ("" when it is TensorFlow's own choice or the user's)."""
    if requested:
        return requested, ""
    cpus, tasks = available(), tasks_on_this_machine(cfg)
    threads = max(1, math.floor(cpus / tasks))
    if threads == len(os.sched_getaffinity(0)):
        return threads, ""
    where = f"{_cpus(cpus)} {'shared by ' + str(tasks) + ' tasks of the job' if tasks > 1 else 'for this task'}"
    return threads, f"{threads} thread{'s' if threads > 1 else ''} per op: {where} (--intra-op-threads sets it)"


def available() -> float:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU limit."""
    cpus = float(len(os.sched_getaffinity(0)))
    quota = cgroup_limit()
    return min(cpus, quota) if quota else cpus


def tasks_on_this_machine(cfg: TFConfig) -> int:
    """The job's tasks on this task's machine, itself included.

    Only a loopback address says where a task runs: every task of a local job is on 127.0.0.1.
    Tasks named by host are one machine each, as pods are in a cluster, unless the target says
    otherwise in PML_TASKS_ON_MACHINE.
    """
    given = os.environ.get(TASKS_ON_MACHINE, "")
    if given.isdigit() and int(given):
        return int(given)
    if not listen_host(cfg.address.rpartition(":")[0]):
        return 1
    return sum(1 for tasks in cfg.cluster.values() for address in tasks if listen_host(address.rpartition(":")[0]))


def cgroup_limit(root: pathlib.Path = CGROUP, membership: Optional[str] = None) -> Optional[float]:
    """The CPU limit of this process's cgroup in CPUs, or None where there is none.

    cgroup v2: `cpu.max` ("max 100000" or "QUOTA PERIOD") of the process's group and of each group
    above it, the tightest counting (Documentation/admin-guide/cgroup-v2.rst, "CPU Interface
    Files"). cgroup v1: `cpu.cfs_quota_us` over `cpu.cfs_period_us` where the cpu controller is
    mounted, -1 for none: inside a container that mount is the container's own group.
    """
    if membership is None:
        try:
            membership = PROC_CGROUP.read_text()
        except OSError:
            return None
    if (root / "cgroup.controllers").exists():  # a pure v2 hierarchy
        group = next((line[3:] for line in membership.splitlines() if line.startswith("0::")), "/")
        limits = []
        folder = root / group.strip("/")
        while True:
            limits.append(_v2_limit(folder / "cpu.max"))
            if folder == root:
                break
            folder = folder.parent
        limits = [limit for limit in limits if limit]
        return min(limits) if limits else None
    for controller in ("cpu", "cpu,cpuacct"):
        quota, period = _read_int(root / controller / "cpu.cfs_quota_us"), _read_int(root / controller / "cpu.cfs_period_us")
        if quota is not None and period:
            return quota / period if quota > 0 else None
    return None


def _v2_limit(path: pathlib.Path) -> Optional[float]:
    try:
        quota, period = path.read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _read_int(path: pathlib.Path) -> Optional[int]:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _cpus(n: float) -> str:
    return f"{n:g} CPU{'' if n == 1 else 's'}"
