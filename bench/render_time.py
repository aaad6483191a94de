"""How long `pmlctl render` takes for the study's shape (1 chief, 6 workers, 3 ps), as a user runs it.

Each run is a fresh `pmlctl` process: Python start-up, the Helm engine and the validation of
every object (Kubernetes schemas, and the TFJob CRD when shared/ has it) all count. One untimed
run first fills the disk cache. Prints, per mode, the median and slowest wall time and the median
CPU time (user + system) of the process, and the load average: on a busy machine the wall time
waits for a core, the CPU time does not. The target is under 1 s on the 2-core test machine.

    .venv/bin/python bench/render_time.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = 1.0


def pmlctl() -> list[str]:
    script = pathlib.Path(sys.executable).with_name("pmlctl")
    return [str(script)] if script.exists() else [shutil.which("pmlctl") or "pmlctl"]


def crd_args() -> list[str]:
    crd = pathlib.Path(os.environ.get("PML_SHARED", ROOT.parent / "shared")) / "schemas" / "kubeflow.org_tfjobs.yaml"
    return ["--crd", str(crd)] if crd.is_file() else []


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as out:
        for mode in ("tfjob", "native"):
            command = [
                *pmlctl(),
                "render",
                "--mode",
                mode,
                "--name",
                "study",
                "--workers",
                "6",
                "--ps",
                "3",
                *crd_args(),
                "-o",
                f"{out}/{mode}.yaml",
            ]
            timed(command)
            walls, cpus = zip(*(timed(command) for _ in range(runs)), strict=False)
            median = statistics.median(walls)
            verdict = "ok" if median < TARGET else f"over the {TARGET:.0f} s target"
            print(
                f"{mode:<6} wall median {median:.3f} s, slowest {max(walls):.3f} s; CPU median "
                f"{statistics.median(cpus):.3f} s; {runs} runs ({verdict})"
            )
            print(f"       {' '.join(command[1:])}")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
