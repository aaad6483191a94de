"""How fast `pmlctl --help` and `pmlctl submit --help` answer, as fresh processes.

    .venv/bin/python bench/cli_startup.py [--runs 7]

Prints the median and slowest wall time of each over the runs (after one untimed warm-up run),
and whether the command's process imported TensorFlow (it must not).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

PROBE = (
    "import sys, runpy\nsys.argv = ['pmlctl'] + sys.argv[1:]\n"
    "try:\n    runpy.run_module('deploy', run_name='__main__')\nexcept SystemExit:\n    pass\n"
    "print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)"
)


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deploy", *args], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=7)
    runs = p.parse_args().runs
    print(f"{'command':<24} {'median':>8} {'slowest':>8}  tensorflow imported")
    for args in (["--help"], ["submit", "--help"]):
        timed(args)
        times = [timed(args) for _ in range(runs)]
        probe = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True).stderr
        print(
            f"{'pmlctl ' + ' '.join(args):<24} {statistics.median(times):>7.3f}s {max(times):>7.3f}s  "
            f"{probe.strip().rpartition(' ')[2]}"
        )


if __name__ == "__main__":
    main()
