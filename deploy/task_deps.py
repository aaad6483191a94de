"""Install a workspace's requirements.txt into the trainer image's Python, in the task image's build.

`python task_deps.py requirements.txt`, run as root by the task image's Dockerfile (written by
deploy/task_image.py) with the image's own Python: standard library only, and never imported by
pmlctl. Every distribution the trainer image holds is held at its version (a constraints file of
them all), so tensorflow-cpu and keras cannot move; afterwards the build fails unless they all
still stand, with no tf-keras and no full `tensorflow` beside tensorflow-cpu (tf-keras depends on
it, and it is the CUDA build). The trainer image has no pip (its Dockerfile uninstalls it): pip is
bootstrapped with ensurepip for the install and removed again in the same layer.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile

NEVER = ("tf-keras",)  # pulls in the full tensorflow, which is the CUDA build
# Debian's python3 keeps ensurepip, and the wheels it installs, in packages of their own; purged with
# --auto-remove, this one takes along all it brought.
DEBIAN_ENSUREPIP = "python3-venv"


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def installed() -> dict[str, str]:
    return {_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def run(*argv: str) -> None:
    print("+ " + " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def bootstrap_pip() -> bool:
    """pip for this Python; True when Debian's ensurepip had to be installed for it."""
    if subprocess.run([sys.executable, "-m", "ensurepip"]).returncode == 0:
        return False
    run("apt-get", "update", "-qq")
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", DEBIAN_ENSUREPIP)
    run(sys.executable, "-m", "ensurepip")
    return True


def problems(before: dict[str, str], after: dict[str, str]) -> list[str]:
    found = [
        f"{name} {version} became {after.get(name, 'uninstalled')}"
        for name, version in before.items()
        if after.get(name) != version
    ]
    found += [f"{name} was installed" for name in NEVER if name in after]
    if "tensorflow" in after and "tensorflow" not in before:
        found.append("tensorflow (the CUDA build) was installed beside tensorflow-cpu")
    return found


def main(requirements: str) -> int:
    before = installed()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("".join(f"{name}=={version}\n" for name, version in sorted(before.items())))
    debian = bootstrap_pip()
    if "setuptools" not in before:  # ensurepip's own, not the trainer's: the requirements decide
        run(sys.executable, "-m", "pip", "uninstall", "-y", "-q", "setuptools")
    env = {
        **os.environ,
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_ROOT_USER_ACTION": "ignore",
    }
    print(f"+ pip install -c <the image's {len(before)} distributions> -r {requirements}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-c", constraints.name, "-r", requirements], check=True, env=env
    )
    if "pip" not in before:
        run(sys.executable, "-m", "pip", "uninstall", "-y", "-q", "pip")
    if debian:
        run("apt-get", "purge", "-y", "-qq", "--auto-remove", DEBIAN_ENSUREPIP)
        run("rm", "-rf", "/var/lib/apt/lists")
    os.unlink(constraints.name)
    found = problems(before, installed())
    if found:
        print(f"error: {requirements} would change the trainer image: {'; '.join(found)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
