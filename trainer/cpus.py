"""How many threads each of TensorFlow's ops may use: this task's share of the CPUs.

TensorFlow sizes its intra-op pool to the CPUs the process may be scheduled on, and nothing
else: `NumSchedulableCPUs` counts `sched_getaffinity` (xla/tsl/platform/default/port.cc), which
`EigenThreadPoolInfo` takes as its default (tensorflow/core/common_runtime/local_device.cc). It
knows neither a container's CPU limit nor the other tasks of the job on the same machine, whose
pools then hand every small op between more threads than there are cores (bench/RESULTS.md,
"Threads per task").

Free of TensorFlow (pmlctl reads it too): it only reads /proc and /sys; trainer/thread_pools.py applies the share.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Callable

from pml_trainer.tf_config import TFConfig, listen_host

# Set by a target that runs the job's tasks on one machine under names of their own (the Docker
# target's containers), where addresses cannot tell.
TASKS_ON_MACHINE = "PML_TASKS_ON_MACHINE"
CGROUP = pathlib.Path("/sys/fs/cgroup")
PROC_CGROUP = pathlib.Path("/proc/self/cgroup")
TF_OWN = "TF_NUM_INTRAOP_THREADS"  # TensorFlow reads it when the setting is 0 (local_device.cc)


def intra_op_threads(requested: int, cfg: TFConfig) -> tuple[int, str]:
    """Threads per op, 0 for TensorFlow's own choice, and why, where that is not the user's or
    TensorFlow's choice ("" otherwise)."""
    if requested or os.environ.get(TF_OWN):
        return requested, ""
    affinity = len(os.sched_getaffinity(0))
    cpus, tasks = available(affinity), tasks_on_this_machine(cfg)
    threads = max(1, math.floor(cpus / tasks))
    if threads == affinity:
        return 0, ""
    where = f"shared by {tasks} tasks of the job" if tasks > 1 else "for this task"
    plural = "s" if threads > 1 else ""
    return threads, f"{threads} thread{plural} per op: {_cpus(cpus)} {where} (--intra-op-threads sets it)"


def available(affinity: int | None = None) -> float:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU limit."""
    cpus = float(affinity or len(os.sched_getaffinity(0)))
    limit = cgroup_limit()
    return min(cpus, limit) if limit else cpus


def tasks_on_this_machine(cfg: TFConfig) -> int:
    """The job's tasks on this task's machine, itself included.

    Only a loopback address says where a task runs: every task of a local job is on 127.0.0.1.
    Tasks named by host are one machine each, as pods are in a cluster (even a one-node one),
    unless the target says otherwise in PML_TASKS_ON_MACHINE. An evaluator left out of the
    cluster, as TF_CONFIG allows, has no address to compare: it counts as a machine of its own.
    """
    given = os.environ.get(TASKS_ON_MACHINE, "")
    if given.isascii() and given.isdigit() and int(given):
        return int(given)
    own = cfg.cluster.get(cfg.task_type, [])
    if cfg.task_index >= len(own) or not _on_loopback(own[cfg.task_index]):
        return 1
    return sum(1 for tasks in cfg.cluster.values() for address in tasks if _on_loopback(address))


def cgroup_limit(root: pathlib.Path = CGROUP, membership: str | None = None) -> float | None:
    """The CPU limit of this process's cgroup in CPUs, or None where there is none.

    The tightest limit of the process's group and of every group above it counts. cgroup v2:
    `cpu.max`, "max PERIOD" or "QUOTA PERIOD" (Documentation/admin-guide/cgroup-v2.rst, "CPU
    Interface Files"). cgroup v1: `cpu.cfs_quota_us` over `cpu.cfs_period_us`, -1 for none
    (Documentation/scheduler/sched-bwc.rst). A group that is not under the mount is a host's path
    seen from a container, whose mount is its own group: the mount's files count then.
    """
    if membership is None:
        try:
            membership = PROC_CGROUP.read_text()
        except OSError:
            membership = ""
    groups = dict(_membership(membership))
    if (root / "cgroup.controllers").exists():  # a pure v2 hierarchy
        return _tightest(root, groups.get("", "/"), _v2_limit)
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (root / mount).is_dir():
            return _tightest(root / mount, groups.get("cpu", "/"), _v1_limit)
    return None


def _membership(text: str):
    """(controller, group) pairs of /proc/self/cgroup; v2's line has the controller ""."""
    for line in text.splitlines():
        if line.count(":") >= 2:
            _, controllers, group = line.split(":", 2)
            for controller in controllers.split(","):
                yield controller, group


def _tightest(mount: pathlib.Path, group: str, read: Callable[[pathlib.Path], float | None]) -> float | None:
    folder = mount / group.strip("/")
    if not folder.is_dir():
        folder = mount
    limits = [read(folder)]
    while folder != mount:
        folder = folder.parent
        limits.append(read(folder))
    limits = [limit for limit in limits if limit]
    return min(limits) if limits else None


def _v2_limit(folder: pathlib.Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_limit(folder: pathlib.Path) -> float | None:
    try:
        quota, period = (int((folder / name).read_text()) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        return quota / period if quota > 0 else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _on_loopback(address: str) -> bool:
    return bool(listen_host(address.rpartition(":")[0]))


def _cpus(n: float) -> str:
    return f"{n:g} CPU{'' if n == 1 else 's'}"
