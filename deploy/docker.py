"""The docker target: every task of a job as a container on the job's own Docker network.

A task's container is named `<job>-<role>-<index>`, which is also its host name on the network,
so TF_CONFIG addresses the tasks by name on port 2222, as Services do for pods on Kubernetes.
What the supervisor starts per task is an attached `docker run --rm`: it streams the container's
output, passes SIGTERM on and exits with the container's exit code, so log prefixes, restarts,
job.json and every command after submit are the local target's own (`DockerTarget` is a
`SupervisedTarget`), and only the launcher's hooks (deploy/launcher.py) are here: the network,
the containers and the model dir's owner.

The docker CLI is `$PML_DOCKER` (default `docker` on PATH); it reads DOCKER_HOST itself.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess

from deploy import local, redact, supervisor, workspaces
from deploy.spec import TF_PORT, JobSpec
from pml_trainer.checkpoints import JOB_ENV
from pml_trainer.cpus import TASKS_ON_MACHINE
from pml_trainer.errors import BadInput, Unavailable
from pml_trainer.fingerprint import IMAGE_ENV
from pml_trainer.tf_config import build

LABEL = "pml.job"  # on every container and network of a job, so that leftovers can be found
# Host variables the storage clients read. They are passed by name (`-e NAME`): docker copies the
# value from its own environment, so no secret appears in a command line or the dry run. The spec's
# own env is passed the same way, its values put in the docker CLI's environment: a command line is
# world-readable (/proc/PID/cmdline, `ps`), a process's environment only by its user and root.
PASSTHROUGH = re.compile(r"^(AWS_|GOOGLE_)|^STORAGE_EMULATOR_HOST$")
PULL = {"Always": "always", "IfNotPresent": "missing", "Never": "never"}
CALL_TIMEOUT = 120  # seconds for one docker command that is not a task (a network, removing containers)


def cli() -> list[str]:
    return shlex.split(os.environ.get("PML_DOCKER", "docker"))


# What the docker CLI says when its daemon does not answer (seen from Debian's docker.io with DOCKER_HOST
# at a missing socket), and when the socket is not the user's ("permission denied while trying to
# connect to the Docker daemon socket").
_NO_DAEMON = "Cannot connect to the Docker daemon"
_PERMISSION_DENIED = "permission denied"


def require_daemon() -> None:
    """Raise BadInput with the fix when the docker CLI is missing, Unavailable when its daemon
    cannot be reached."""
    probe = call("version", "--format", "{{.Server.Version}}")
    if probe.returncode != 0:
        where = os.environ.get("DOCKER_HOST", "its default socket")
        said = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "no reply"
        if _PERMISSION_DENIED in probe.stderr:
            raise BadInput(
                f"the Docker daemon at {where} refuses this user; join the docker group or run as root ({said})"
            )
        raise Unavailable(f"cannot reach the Docker daemon at {where}; start dockerd or set DOCKER_HOST ({said})")


class Plan(supervisor.Plan):
    def describe(self) -> str:
        """The dry run: the network, and each task's `docker run` command, ready to paste."""
        name = self.spec.name
        image = self.spec.image
        if self.shipment:
            image = f"{self.shipment.image} (FROM {self.spec.image}, built at submit unless it is up to date)"
        lines = [f"job {name}: docker containers on network {name}, image {image}", "cluster:"]
        lines += [f"  {role}: {', '.join(addrs)}" for role, addrs in self.cluster.items()]
        if self.shipment:
            lines.append(
                f"code: workspace {self.shipment.source} ({self.shipment.code_digest}) at {workspaces.IN_IMAGE} in the image"
            )
        lines.append(shlex.join([*cli(), *_network_create(name)]))
        if self.spec.env:  # what `-e NAME` takes from the docker CLI's environment
            lines.append("environment of each docker run (secrets hidden):")
            lines += [f"  {key}={redact.value(key, value)}" for key, value in self.spec.env.items()]
        for t in self.tasks:
            lines += [f"{t.label}:", "  " + shlex.join(t.argv)]
        if "://" not in self.spec.model_dir and os.getuid() == 0:
            lines.append(f"the model dir {pathlib.Path(self.spec.model_dir).resolve()} is given to {run_as(self.spec)}")
        lines.append("afterwards: " + shlex.join([*cli(), "network", "rm", name]))
        return "\n".join(lines)


def plan(spec: JobSpec, job_dir: pathlib.Path, cpus: list[int] | None = None) -> Plan:
    """Container name, TF_CONFIG and `docker run` command of every task; nothing is started.
    `cpus` pins every container to those CPUs (sweeps over cores)."""
    name = spec.name
    cluster = spec.replicas.cluster(lambda role, index: f"{name}-{role}-{index}:{TF_PORT}")
    shipment = workspaces.shipment(spec)
    trainer, mounts = _localise(spec)
    image, pull = spec.image, PULL[spec.image_pull_policy]
    if shipment:  # the task image is built here at submit, and is in no registry
        image, pull = shipment.image, "never"
        trainer = trainer.model_copy(update={"workspace": workspaces.IN_IMAGE})
    user = run_as(spec)
    shared = [
        "--network",
        name,
        "--label",
        f"{LABEL}={name}",
        "--user",
        user,
        "--pull",
        pull,
        "-e",
        "HOME=/tmp",  # any UID can write /tmp
        "-e",
        f"{IMAGE_ENV}={image}",
        "-e",
        f"{JOB_ENV}={name}",
    ]
    shared += [arg for key in spec.env for arg in ("-e", key)]
    shared += [
        arg for key in sorted(os.environ) if PASSTHROUGH.match(key) and key not in spec.env for arg in ("-e", key)
    ]
    shared += [arg for mount in mounts for arg in ("-v", mount)]
    shared += ["--cpuset-cpus", ",".join(map(str, cpus))] if cpus else []
    # The containers share this machine's CPUs, which their names do not show (trainer/cpus.py).
    shared += ["-e", f"{TASKS_ON_MACHINE}={sum(len(addresses) for addresses in cluster.values())}"]
    result = Plan(spec, cluster, shipment=shipment)
    for role, addresses in cluster.items():
        for index, address in enumerate(addresses):
            container = address.rpartition(":")[0]
            # --init: a signal handler-less PID 1 would ignore the SIGTERM that `docker run` passes on.
            argv = [
                *cli(),
                "run",
                "--rm",
                "--init",
                "--name",
                container,
                *shared,
                "-e",
                "TF_CONFIG=" + build(cluster, role, index),
                image,
                *trainer.to_argv(),
            ]
            # The task's env is the docker CLI's, where `-e NAME` finds the spec's values.
            result.tasks.append(
                supervisor.Task(role, index, address, dict(spec.env), argv, job_dir / f"{role}-{index}.log")
            )
    return result


def run_as(spec: JobSpec) -> str:
    """The container's user: yours, so that the model dir's files are yours; as root, the spec's
    non-root user (the one the pods run as), who is then given the model dir."""
    if os.getuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    return f"{spec.security.run_as_user}:{spec.security.run_as_group}"


def _localise(spec: JobSpec):
    """The trainer options with host paths made absolute, and the bind mounts that show those
    paths at the same place in the containers: the model dir (writable) and local inputs."""
    updates, mounts = {}, []
    model_dir = spec.model_dir
    if "://" not in model_dir:
        updates["model_dir"] = model_dir = str(pathlib.Path(model_dir).resolve())
        mounts.append(f"{model_dir}:{model_dir}")
    inputs = {"data_dir": spec.trainer.data_dir}
    kind, _, path = spec.trainer.dataset.partition(":")
    if kind in ("images", "npz") and "://" not in path:
        inputs["dataset"] = path
    for field, path in inputs.items():
        if path and "://" not in path:
            absolute = str(pathlib.Path(path).resolve())
            updates[field] = f"{kind}:{absolute}" if field == "dataset" else absolute
            mounts.append(f"{absolute}:{absolute}:ro")
    credentials = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if credentials and os.path.isfile(credentials):  # passed through by name; the file must be there too
        mounts.append(f"{credentials}:{credentials}:ro")
    return spec.trainer.model_copy(update=updates), mounts


def _network_create(name: str) -> list[str]:
    return ["network", "create", "--label", f"{LABEL}={name}", name]


class DockerSupervisor(supervisor.Supervisor):
    target = "docker"
    kind = "docker"
    # Each container has a network namespace of its own, on the job's Docker network; no port is
    # published (no -p), so nothing listens on the host and Docker forwards nothing to the tasks.
    network = "container"

    def prepare(self) -> None:
        """The job's network, after whatever a previous run of the job left (it may have been killed
        before it could clean up). `release` removes every container and the network, whatever happened."""
        require_daemon()
        name = self.plan.spec.name
        remove(name)
        self._prepare_model_dir()
        output(*_network_create(name))

    def release(self) -> None:
        remove(self.plan.spec.name)

    def _prepare_model_dir(self) -> None:
        if "://" in self.plan.spec.model_dir:
            return
        model_dir = pathlib.Path(self.plan.spec.model_dir).resolve()
        model_dir.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            uid, gid = (int(n) for n in run_as(self.plan.spec).split(":"))
            for folder, _, files in os.walk(model_dir):
                for path in (folder, *(os.path.join(folder, f) for f in files)):
                    os.chown(path, uid, gid)


def remove(name: str) -> None:
    """Remove the job's containers (running or not) and its network; nothing there is fine."""
    containers = output("ps", "-aq", "--filter", f"label={LABEL}={name}").split()
    if containers:
        output("rm", "-f", *containers)
    networks = output("network", "ls", "-q", "--filter", f"label={LABEL}={name}").split()
    if networks:
        output("network", "rm", *networks)


def output(*args: str) -> str:
    done = call(*args)
    if done.returncode != 0:
        # The daemon gone (stopped since the job began, say) is an outage, not a fault of the input.
        kind = Unavailable if _NO_DAEMON in done.stderr else BadInput
        raise kind(f"{shlex.join([*cli(), *args])} failed: {done.stderr.strip()}")
    return done.stdout


def call(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([*cli(), *args], capture_output=True, text=True, timeout=CALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Unavailable(
            f"{shlex.join([*cli(), *args])}: no answer from the Docker daemon within {CALL_TIMEOUT}s; "
            "check that dockerd runs (`docker info`), then try again"
        ) from None
    except FileNotFoundError:
        raise BadInput(
            f"{cli()[0]}: docker CLI not found; install Docker (e.g. apt-get install docker.io) "
            "or point PML_DOCKER at the docker binary"
        ) from None


class DockerTarget(local.SupervisedTarget):
    name = "docker"
    summary = "containers of --image on this machine (`pmlctl image build` makes it)"
    supervisor = "deploy.docker"
    planner = staticmethod(plan)
    runs_image = True

    def preflight(self) -> None:
        require_daemon()

    def ship(self, plan: supervisor.Plan) -> None:
        if plan.shipment:
            from deploy import task_image

            snapshot = plan.shipment.make_snapshot()
            task_image.ensure(snapshot, plan.spec.image, plan.shipment.image, plan.shipment.code_digest, self.note)

    def clean_up(self, name: str) -> None:
        remove(name)  # the supervisor does, unless it was killed first


if __name__ == "__main__":
    supervisor.supervise(DockerSupervisor)
