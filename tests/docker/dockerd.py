"""The Docker tier's own daemon and image: installed, started and built here, stopped afterwards.

The daemon keeps its data root under build/docker-test/ (git-ignored), so the base image and the
TensorFlow layer of the trainer image are built once and reused by later runs.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

CACHE = ROOT / "build" / "docker-test"
DEBIAN_BASE = "local/debian:bookworm"
HUB_BASE = "python:3.11-slim"
CA_BUNDLE = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")  # includes a TLS-intercepting proxy's CA
RUNNING: list[dict] = []  # the environment of the session's daemon, once it answers


def run(*argv: str, timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def install_docker() -> None:
    if shutil.which("dockerd") and shutil.which("debootstrap"):
        return
    if os.getuid() != 0:
        pytest.fail("Docker is not installed and this is not root: run `apt-get install docker.io debootstrap`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "docker.io", "debootstrap"],
    ):
        done = run(*argv, env=env)
        assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="session")
def docker_env():
    """The environment that points `pmlctl` and the docker CLI at a daemon of our own.

    Each test file imports this fixture, so pytest makes one per file; they share the first one's
    daemon, since a second daemon finds the data root in use."""
    if RUNNING:
        yield RUNNING[0]
        return
    install_docker()
    CACHE.mkdir(parents=True, exist_ok=True)
    runtime = pathlib.Path(tempfile.mkdtemp(prefix="pml-dockerd-"))  # short: socket paths are limited
    socket = f"unix://{runtime}/docker.sock"
    log = open(CACHE / "dockerd.log", "ab")
    daemon = subprocess.Popen(
        [
            "dockerd",
            "--data-root",
            str(CACHE / "data"),
            "--exec-root",
            str(runtime / "exec"),
            "--pidfile",
            str(runtime / "docker.pid"),
            "-H",
            socket,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # The docker.io package's own CLI: it matches the daemon and builds with BuildKit by itself.
    env = {
        **os.environ,
        "DOCKER_HOST": socket,
        "PML_DOCKER": "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker",
    }
    try:
        wait_until(
            lambda: daemon.poll() is not None or run(env["PML_DOCKER"], "version", env=env).returncode == 0,
            60,
            "dockerd answering",
        )
        assert daemon.poll() is None, f"dockerd exited; see {CACHE / 'dockerd.log'}"
        RUNNING.append(env)
        yield env
    finally:
        RUNNING.clear()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        shutil.rmtree(runtime, ignore_errors=True)


def docker(env: dict, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return run(env["PML_DOCKER"], *args, env=env, timeout=timeout)


def base_image(env: dict) -> str:
    """python:3.11-slim where Docker Hub answers; otherwise Debian 12 from Debian's own packages."""
    if docker(env, "image", "inspect", DEBIAN_BASE).returncode == 0:
        return DEBIAN_BASE  # built by an earlier run: Docker Hub was unreachable then
    if docker(env, "pull", HUB_BASE, timeout=120).returncode == 0:
        return HUB_BASE
    rootfs = CACHE / "rootfs"
    if not (rootfs / "usr" / "bin" / "apt-get").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        done = run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for leftover in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        leftover.unlink()  # debootstrap's downloads: 116 MB the image has no use for
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    done = subprocess.run(
        [env["PML_DOCKER"], "import", "-", DEBIAN_BASE],
        stdin=tar.stdout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tar.wait()
    assert done.returncode == 0, done.stderr
    # The image holds it now. A root filesystem left in the work tree has device nodes (dev/full,
    # dev/zero) that a recursive copy of the tree reads for ever: it once filled the disk.
    shutil.rmtree(rootfs, ignore_errors=True)
    return DEBIAN_BASE


@pytest.fixture(scope="session")
def trainer_image(docker_env) -> str:
    """Build the image with `pmlctl image build`, as a user would; return its tag."""
    tag = "parallel-ml:latest"
    argv = [
        sys.executable,
        "-m",
        "deploy",
        "image",
        "build",
        "--tag",
        tag,
        "--base",
        base_image(docker_env),
        "--context",
        str(ROOT),
    ]
    if CA_BUNDLE.is_file():
        argv += ["--ca-bundle", str(CA_BUNDLE)]
    started = time.monotonic()
    done = run(*argv, env=docker_env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    size = docker(docker_env, "image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    print(f"\nimage {tag}: {int(size) / 1e6:.0f} MB, built in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return tag
