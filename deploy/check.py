"""`pmlctl check`: a task tried once, in the environment its jobs run in, before a job runs it.

It runs `python -m pml_trainer.check` (trainer/check.py) with the job's trainer flags: with
`-t local` on the Python pmlctl runs on, whose packages are what a local job's tasks import; with
`-t docker` in a container of the image a docker job's tasks run. The report comes to stdout as
the check prints it; its stderr comes through without TensorFlow's own log lines (unless
--verbose), so a task that fails shows its frames and one `error:` line, and pmlctl exits with
the check's code.

It is not a job command: nothing is submitted or named, and nothing is left behind once it
returns, so it stays out of the target contract (deploy/target.py). Its two places are the two
environments a job's tasks run in on this machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from deploy import docker, view, workspaces
from deploy.spec import JobSpec
from deploy.supervisor import NOISE, PR_SET_PDEATHSIG, load_libc
from deploy.target import Note
from pml_trainer.errors import BadInput

PLACES = ("local", "docker")
OUTPUTS = ("table", "json")
MODULE = ["-m", "pml_trainer.check"]
DOCKER_FAILED = 125  # `docker run`'s own failure, before the check ran: no container, no image


def run(spec: JobSpec, where: str | None, output: str, verbose: bool) -> int:
    """Run the check of `spec`'s task where a job of it would run (local unless `where` says
    otherwise); the check's exit code."""
    where = where or PLACES[0]
    if where not in PLACES:
        raise BadInput(
            f"--target {where}: a check runs in a job's environment on this machine, -t local or -t docker "
            "(a cluster runs the image -t docker checks)"
        )
    if output not in OUTPUTS:
        raise BadInput(f"--output {output}: use table or json")
    if where == "local":
        argv = [sys.executable, *MODULE, "--output", output, *spec.trainer.to_argv()]
        return _follow(argv, {**os.environ, **spec.env}, verbose)
    docker.require_daemon()
    where_to = container(spec)
    code = _follow(_docker_run(spec, where_to, output), {**os.environ, **spec.env}, verbose)
    if code == DOCKER_FAILED:
        raise BadInput(f"docker could not run the check in {where_to.image}; its message is above", code)
    return code


@dataclass
class Container:
    """What a docker check runs in: the image, how to get it, as whom, and what is mounted."""

    image: str
    pull: str  # docker run --pull
    user: str
    mounts: list[str]  # docker run -v
    workspace: str | None  # --workspace inside the container; None: the built-in task needs none


def container(spec: JobSpec) -> Container:
    """The container the check runs in: what the job's containers run. With a task, the task
    image (deploy/task_image.py, built here unless it is up to date) as the job's user; without,
    the trainer image (--image). Only the job's local inputs are mounted, read-only."""
    _, mounts = docker._localise(spec)
    # The only writable mount is the model dir, which a check never writes, nor should create.
    inputs = [mount for mount in mounts if mount.endswith(":ro")]
    image, pull = spec.image, docker.PULL[spec.image_pull_policy]
    _present(image, pull)
    shipment = workspaces.shipment(spec)
    if shipment is None:
        return Container(image, pull, f"{os.getuid()}:{os.getgid()}", inputs, None)
    from deploy import task_image

    snapshot = shipment.make_snapshot()
    task_image.ensure(snapshot, image, shipment.image, shipment.code_digest, lambda text: view.event(Note(text)))
    return Container(shipment.image, "never", docker.run_as(spec), inputs, workspaces.IN_IMAGE)


def _present(image: str, pull: str) -> None:
    """Refuse an image docker would not find: not on this machine, and from no registry (the
    trainer image as `pmlctl image build` tags it) or not to be pulled."""
    if pull == "always":
        return
    inspect = [*docker.cli(), "image", "inspect", image]
    if subprocess.run(inspect, capture_output=True, timeout=docker.CALL_TIMEOUT).returncode == 0:
        return
    if pull == "never" or "/" not in image:
        raise BadInput(
            f"image {image} is not on this machine; build it with `pmlctl image build --tag {image}`, or give --image"
        )


def _docker_run(spec: JobSpec, where: Container, output: str) -> list[str]:
    trainer = (
        spec.trainer if where.workspace is None else spec.trainer.model_copy(update={"workspace": where.workspace})
    )
    # The job's variables by name, as a docker job passes them: their values stay off the command line.
    names = [*spec.env, *(key for key in sorted(os.environ) if docker.PASSTHROUGH.match(key) and key not in spec.env)]
    return [
        *docker.cli(),
        "run",
        "--rm",
        "--init",  # a signal reaches the check: PID 1 without a handler would ignore SIGTERM
        "--pull",
        where.pull,
        "--user",
        where.user,
        "-e",
        "HOME=/tmp",  # any user can write there
        *(arg for name in names for arg in ("-e", name)),
        *(arg for mount in where.mounts for arg in ("-v", mount)),
        "--entrypoint",
        "python",
        where.image,
        *MODULE,
        "--output",
        output,
        *trainer.to_argv(),
    ]


def _follow(argv: list[str], env: dict[str, str], verbose: bool) -> int:
    """Run the check to its end: stdout as it is, stderr without TensorFlow's log lines. Ctrl-C and
    SIGTERM are passed on, so the check ends as it does on them (a container removed by --rm), and
    the check dies with pmlctl, killed or not."""
    libc = load_libc()
    child = subprocess.Popen(
        argv,
        env=env,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the terminal's Ctrl-C comes to it once, from here
        preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM),
    )
    assert child.stderr is not None
    previous = {
        sig: signal.signal(sig, lambda sig, _: child.send_signal(sig)) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        for line in child.stderr:
            if verbose or not NOISE.match(line.decode(errors="replace")):
                sys.stderr.buffer.write(line)
                sys.stderr.buffer.flush()
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's way, 128 + N
