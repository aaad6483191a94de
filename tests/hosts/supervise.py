"""Jobs on test hosts: the local target, with each task in a host of its own, named as pods are.

`HostTarget` is a supervised target (deploy/local.py) with launcher hooks of its own
(deploy/launcher.py): task `ROLE-INDEX` runs in
the lab's host of that name (`ip netns exec`, which execs, so the supervisor's child is the
trainer itself) and TF_CONFIG addresses every peer as `ROLE-INDEX:2222`, resolved through the
hosts' hosts files as a TFJob's pods resolve their Services. Restarts, exit codes, logs and
job.json are the local target's own: its supervisor runs the job (`python -m hosts.supervise`,
with tests/ on PYTHONPATH).
"""

from __future__ import annotations

import sys

from deploy import jobs, local, supervisor
from deploy.spec import TF_PORT, JobSpec
from hosts.network import Lab
from pml_trainer import storage
from pml_trainer.tf_config import build


class HostSupervisor(supervisor.Supervisor):
    target = "hosts"
    kind = "hosts"
    network = "container"  # every task has a network namespace of its own already: its host

    def prepare(self) -> None:
        """Nothing to make: the lab's hosts are there before the job."""

    def release(self) -> None:
        """Nothing to undo: the hosts outlive the job."""


def host_name(role: str, index: int) -> str:
    return f"{role}-{index}"


def names(spec: JobSpec) -> list[str]:
    """The hosts a job needs, one per task."""
    return [host_name(role, i) for role, count in spec.replicas.cluster_roles().items() for i in range(count)]


def plan(spec: JobSpec, lab: Lab) -> supervisor.Plan:
    job_dir = jobs.job_dir(spec.name)
    cluster = spec.replicas.cluster(lambda role, index: f"{host_name(role, index)}:{TF_PORT}")
    trainer = spec.trainer.model_copy(update={"model_dir": storage.absolute(spec.model_dir)})
    argv = [sys.executable, "-u", "-m", "pml_trainer", *trainer.to_argv()]
    result = supervisor.Plan(spec, cluster)
    for role, addresses in cluster.items():
        for index, address in enumerate(addresses):
            env = {**spec.env, "TF_CONFIG": build(cluster, role, index), "PYTHONUNBUFFERED": "1"}
            argv_in_host = [*lab.exec_argv(host_name(role, index)), *argv]
            result.tasks.append(
                supervisor.Task(role, index, address, env, argv_in_host, job_dir / f"{role}-{index}.log")
            )
    return result


class HostTarget(local.SupervisedTarget):
    name = "hosts"
    summary = "processes in test hosts"
    supervisor = "hosts.supervise"

    def __init__(self, lab: Lab):
        super().__init__()
        self.lab = lab

    def planner(self, spec: JobSpec, job_dir, cpus: list[int] | None = None) -> supervisor.Plan:
        return plan(spec, self.lab)

    def preflight(self) -> None:
        """Nothing to check: the lab exists, or the plan could not have been made."""

    def ship(self, plan: supervisor.Plan) -> None:
        """Nothing to ship: the hosts' jobs train the built-in models."""

    def clean_up(self, name: str) -> None:
        """Nothing left: the tasks were processes in the lab's hosts."""


if __name__ == "__main__":
    supervisor.supervise(HostSupervisor)
