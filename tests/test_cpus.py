"""Threads per op: this task's share of the CPUs, from its affinity, its cgroup's limit and the
job's other tasks on the same machine."""

from __future__ import annotations

import pytest

from pml_trainer import cpus
from pml_trainer.tf_config import TFConfig

LOCAL_PS_JOB = {"chief": ["127.0.0.1:2000"], "worker": ["127.0.0.1:2002", "127.0.0.1:2003"], "ps": ["127.0.0.1:2004"]}
PODS = {"chief": ["job-chief-0.job:2222"], "worker": ["job-worker-0.job:2222"], "ps": ["job-ps-0.job:2222"]}


def v2(tmp_path, groups: dict[str, str]):
    """A cgroup v2 hierarchy: `cpu.max` of each group given."""
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    for group, cpu_max in groups.items():
        (tmp_path / group).mkdir(parents=True, exist_ok=True)
        (tmp_path / group / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("groups", "limit"),
    [
        ({"kubepods/pod1/c1": "150000 100000", "kubepods/pod1": "max 100000"}, 1.5),
        ({"kubepods/pod1/c1": "max 100000", "kubepods/pod1": "50000 100000"}, 0.5),  # a parent's tighter limit holds
        ({"kubepods/pod1/c1": "400000 100000", "kubepods/pod1": "200000 100000"}, 2.0),
        ({"kubepods/pod1/c1": "max 100000", "kubepods/pod1": "max 100000"}, None),
    ],
)
def test_cgroup_v2_takes_the_tightest_limit_from_the_group_up(tmp_path, groups, limit):
    root = v2(tmp_path, groups)
    assert cpus.cgroup_limit(root, "0::/kubepods/pod1/c1\n") == limit


def test_cgroup_v2_inside_a_container_reads_its_own_namespace_root(tmp_path):
    root = v2(tmp_path, {".": "250000 100000"})
    assert cpus.cgroup_limit(root, "0::/\n") == 2.5


def v1(folder, quota: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")


@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct"])
@pytest.mark.parametrize(("quota", "limit"), [("150000", 1.5), ("-1", None)])
def test_cgroup_v1_in_a_container_reads_its_mount_which_is_its_own_group(tmp_path, controller, quota, limit):
    v1(tmp_path / controller, quota)  # the host's path in /proc/self/cgroup is not under it
    assert cpus.cgroup_limit(tmp_path, "3:cpu,cpuacct:/docker/abc\n0::/\n") == limit


@pytest.mark.parametrize(("job", "parent", "limit"), [("50000", "-1", 0.5), ("-1", "150000", 1.5), ("-1", "-1", None)])
def test_cgroup_v1_on_a_host_takes_the_tightest_limit_from_the_group_up(tmp_path, job, parent, limit):
    v1(tmp_path / "cpu", "-1")
    v1(tmp_path / "cpu" / "ci", parent)
    v1(tmp_path / "cpu" / "ci" / "job", job)
    assert cpus.cgroup_limit(tmp_path, "4:memory:/x\n2:cpu,cpuacct:/ci/job\n0::/\n") == limit


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cpus.cgroup_limit(tmp_path, "0::/\n") is None


def test_a_malformed_cpu_max_is_no_limit(tmp_path):
    assert cpus.cgroup_limit(v2(tmp_path, {".": "lots 100000"}), "0::/\n") is None


@pytest.mark.parametrize(
    ("cluster", "task", "expected"),
    [
        (LOCAL_PS_JOB, ("ps", 0), 4),
        ({**LOCAL_PS_JOB, "evaluator": ["localhost:2005"]}, ("worker", 1), 5),
        (PODS, ("worker", 0), 1),  # a pod per task: a machine of its own, as far as anyone can tell
        ({"chief": ["localhost:0"]}, ("chief", 0), 1),
        (LOCAL_PS_JOB, ("evaluator", 0), 1),  # an evaluator outside the cluster, as TF_CONFIG allows
    ],
)
def test_tasks_on_this_machine_are_the_loopback_ones(monkeypatch, cluster, task, expected):
    monkeypatch.delenv(cpus.TASKS_ON_MACHINE, raising=False)
    assert cpus.tasks_on_this_machine(TFConfig(cluster, *task)) == expected


@pytest.mark.parametrize(
    ("affinity", "limit", "cluster", "expected"),
    [
        (
            2,
            None,
            LOCAL_PS_JOB,
            (1, "1 thread per op: 2 CPUs shared by 4 tasks of the job (--intra-op-threads sets it)"),
        ),
        (
            8,
            None,
            LOCAL_PS_JOB,
            (2, "2 threads per op: 8 CPUs shared by 4 tasks of the job (--intra-op-threads sets it)"),
        ),
        (8, 2.5, PODS, (2, "2 threads per op: 2.5 CPUs for this task (--intra-op-threads sets it)")),
        (2, None, PODS, (0, "")),  # TensorFlow's own choice: left to it, and nothing to say
        (4, 0.5, PODS, (1, "1 thread per op: 0.5 CPUs for this task (--intra-op-threads sets it)")),
    ],
)
def test_threads_per_op_are_the_tasks_share(monkeypatch, affinity, limit, cluster, expected):
    monkeypatch.delenv(cpus.TASKS_ON_MACHINE, raising=False)
    monkeypatch.delenv(cpus.TF_OWN, raising=False)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _: set(range(affinity)))
    monkeypatch.setattr(cpus, "cgroup_limit", lambda: limit)
    task = ("worker", 0)
    assert cpus.intra_op_threads(0, TFConfig(cluster, *task)) == expected


def test_threads_asked_for_are_given(monkeypatch):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _: {0, 1})
    assert cpus.intra_op_threads(3, TFConfig(LOCAL_PS_JOB, "ps", 0)) == (3, "")


@pytest.mark.parametrize(("given", "expected"), [("4", 4), ("0", 1), ("²", 1), ("-1", 1), ("", 1)])
def test_a_target_can_say_how_many_tasks_share_the_machine(monkeypatch, given, expected):
    monkeypatch.setenv(cpus.TASKS_ON_MACHINE, given)  # the Docker target's containers
    assert cpus.tasks_on_this_machine(TFConfig(PODS, "ps", 0)) == expected


def test_tensorflows_own_variable_is_left_to_it(monkeypatch):
    monkeypatch.setenv(cpus.TF_OWN, "3")
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _: {0, 1})
    assert cpus.intra_op_threads(0, TFConfig(LOCAL_PS_JOB, "ps", 0)) == (0, "")
