"""`pmlctl plan` against measured jobs on the test hosts (issue 27's accuracy bar).

For each link rate (every host's link shaped by `tbf` to it, both ways) and batch, real jobs of
every shape run on test hosts (a network namespace per task, joined by a switch:
tests/hosts/network.py): one process, 1-3 mirrored workers (ps 0, the chief trains too), and
1-3 workers with 1-2 ps. Each is measured as bench/network_cost.py measures: examples/s is the
median of the epochs after the first (metrics.jsonl). Beside each stands what `pmlctl plan`
predicts for a machine describing the test host (its link's rate as egress, this machine's cores
shared by every task), from the calibration plan probes of the job on this machine just before
each setting's jobs, or once per batch before every job with --calibrate once (tests/hosts/shapes.py:
plan's own calibration, machine table and planning code).

Printed: a table (shape, predicted, measured, error, where plan says the step's time goes),
Kendall's tau between the predicted and the measured order per (link, batch) and over every
point, the worst error, and whether the shape plan recommends is within 10% of the measured
fastest (the bar: every prediction within 20%, the recommendation within 10%).

An epoch is sized to about --epoch-seconds at the predicted rate (at least 20 steps), so that
every job takes about as long whatever its speed; the prediction only sets its length.

Needs root (network namespaces). Run it alone on the machine's CPUs:

    flock -x /tmp/pml-cpu.lock .venv/bin/python bench/plan_accuracy.py [--links 100,1000]
        [--batches 256,1024] [--epochs 4] [--epoch-seconds 3] [--calibrate each|once] [--save FILE]
        [--from FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(ROOT))

from hosts import shapes  # noqa: E402
from hosts.network import Lab, LabError  # noqa: E402
from hosts.supervise import HostTarget  # noqa: E402

from deploy.planning import Calibration  # noqa: E402

ERROR_BAR, PICK_BAR = 0.20, 0.10


def link_label(mbit: float) -> str:
    return f"{mbit / 1000:g} Gbit/s" if mbit >= 1000 else f"{mbit:g} Mbit/s"


def main() -> None:
    try:
        run()
    finally:  # the jobs' model folders and records: --save keeps what the tables need
        shutil.rmtree(WORK, ignore_errors=True)


WORK = pathlib.Path(tempfile.mkdtemp(prefix="pml-planacc-"))


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--links", default="100,1000", help="every host's link in Mbit/s")
    p.add_argument("--batches", default="256,1024")
    p.add_argument("--epochs", type=int, default=4, help="epochs per job; the first is left out of the median")
    p.add_argument("--epoch-seconds", type=float, default=3.0, help="an epoch's length at the predicted rate")
    p.add_argument("--save", type=pathlib.Path, help="write the calibrations and measurements to this JSON file")
    p.add_argument(
        "--from",
        dest="source",
        type=pathlib.Path,
        help="no jobs: predict again, with the code as it is, for the calibrations and measurements a --save wrote",
    )
    p.add_argument(
        "--calibrate",
        choices=("each", "once"),
        default="each",
        help="each: a calibration just before each link's jobs, as near to them in time as plan's own use "
        "(this VM's speed moves between hours: bench/RESULTS.md); once: one per batch, before every job",
    )
    p.add_argument(
        "--shapes", default=",".join(f"{w}x{s}" for w, s in shapes.SHAPES), help="WORKERSxPS, 0x0 one process"
    )
    args = p.parse_args()
    if args.source:
        saved = json.loads(args.source.read_text())
        print(f"from {args.source}: measured {saved['when']} at commit {saved['commit']}; predicted now", flush=True)
        with tempfile.TemporaryDirectory(prefix="pml-planacc-") as folder:
            report(saved, pathlib.Path(folder))
        return
    if os.geteuid() != 0:
        sys.exit("error: this benchmark makes network namespaces and shapes links: run it as root")
    links = [float(m) for m in args.links.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    wanted = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    work = WORK
    os.environ["PML_HOME"] = str(work / "pml-home")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), str(ROOT), os.environ.get("PYTHONPATH")]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    began = time.monotonic()
    print(
        f"machine: {len(os.sched_getaffinity(0))} CPUs; commit {commit.strip() or '?'}; load average "
        f"{pathlib.Path('/proc/loadavg').read_text().split()[0]}",
        flush=True,
    )
    saved = {"commit": commit.strip(), "when": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args) | {"save": None}}
    saved["calibrations"], saved["shapes"], saved["jobs"] = {}, [list(s) for s in wanted], []
    saved["link_cpu"] = {}  # by link rate: CPU seconds per GB between hosts, beyond the loopback
    calibrations: dict[str, Calibration] = {}

    def calibrated(batch: int, mbit: float | None) -> Calibration:
        """The calibration for this batch (and link, with --calibrate each), probed when first wanted."""
        name = str(batch) if mbit is None else setting(batch, mbit)
        if name not in calibrations:
            started = time.monotonic()
            cal = calibrations[name] = shapes.calibration(batch, say=lambda text: print(text, flush=True), fresh=True)
            saved["calibrations"][name] = cal.to_json()
            print(f"calibration, {name} ({time.monotonic() - started:.0f} s): {describe(cal)}", flush=True)
        return calibrations[name]

    if args.calibrate == "once":
        for batch in batches:
            calibrated(batch, None)
    try:
        lab = Lab(shapes.lab_hosts())
    except LabError as err:
        sys.exit(f"error: {err}")
    with lab:
        target, count = HostTarget(lab), 0
        for batch in batches:
            for mbit in links:
                shapes.shape_links(lab, mbit)
                if str(mbit) not in saved["link_cpu"]:
                    saved["link_cpu"][str(mbit)] = shapes.link_cpu_per_gb(lab, mbit)
                    print(
                        f"{link_label(mbit)}: a GB between hosts costs {saved['link_cpu'][str(mbit)]:.2f} CPU seconds beyond the loopback",
                        flush=True,
                    )
                link_cpu = saved["link_cpu"][str(mbit)]
                cal = calibrated(batch, mbit if args.calibrate == "each" else None)
                guess = shapes.predicted(shapes.plan_for(cal, work, mbit, wanted, link_cpu=link_cpu))
                for w, s in wanted:
                    shape = guess[w, s]
                    if shape.problem:
                        continue
                    count += 1
                    steps = shapes.steps_for(args.epoch_seconds, shape.examples_per_sec, batch)
                    epochs = shapes.epochs_for(args.epoch_seconds, shape.examples_per_sec, batch, args.epochs)
                    m = shapes.run_shape(target, work, f"planacc-{count}", w, s, batch, mbit, steps, epochs)
                    saved["jobs"].append(asdict(m))
                    print(
                        f"  {link_label(mbit)}, batch {batch}, {m.label}: predicted {shape.examples_per_sec:.0f}, "
                        f"measured {m.examples_per_sec:.0f} ({shape.examples_per_sec / m.examples_per_sec - 1:+.0%}); "
                        f"epochs {' / '.join(f'{r:.0f}' for r in m.epochs)}; {steps} steps per epoch, "
                        f"{m.seconds:.0f} s, load {m.load}; {cores(m.others)} cores to other processes, "
                        f"{cores(m.kernel)} to interrupts",
                        flush=True,
                    )
                    if args.save:
                        args.save.write_text(json.dumps(saved, indent=1))
    saved["seconds"] = round(time.monotonic() - began)
    if args.save:
        args.save.write_text(json.dumps(saved, indent=1))
    print(f"\n{count} jobs, {saved['seconds']} s in all")
    report(saved, work)


def left(job: dict, got: float) -> str:
    """Not the bar: what plan would predict for a machine with only the cores the job had while
    its epochs ran (this machine's, less what other processes took then; the interrupts, the
    links' packets mostly, are the job's own and in the model: link_cpu_per_gb)."""
    if job.get("others") is None or not job["workers"]:
        return "|"
    shared = max(len(os.sched_getaffinity(0)) - job["others"], 0.25)
    result = shapes.plan_for(
        of_setting(LEFT, job["batch"], job["mbit"]),
        pathlib.Path(tempfile.gettempdir()),
        job["mbit"],
        [(job["workers"], job["ps"])],
        shared,
        LINK_CPU.get(str(job["mbit"]), 0.0),
    )
    found = next(s for s in result.shapes if (s.workers, s.ps) == (job["workers"], job["ps"]))
    return f"{found.examples_per_sec:.0f} | {found.examples_per_sec / got - 1:+.0%}"


LEFT: dict = {}  # the calibrations, by setting (or by batch, with --calibrate once)


def setting(batch: int, mbit: float) -> str:
    return f"batch {batch}, {link_label(mbit)}"


def of_setting(calibrations: dict, batch: int, mbit: float) -> Calibration:
    """A setting's own calibration, or its batch's (--calibrate once, and every run saved before each)."""
    return calibrations.get(setting(batch, mbit)) or calibrations[str(batch)]


LINK_CPU: dict = {}  # CPU seconds per GB between hosts, by link rate (as saved: a string)


def cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def describe(cal: Calibration) -> str:
    return (
        f"one process {cal.local_step * 1e3:.2f} ms per step ({(cal.local_cpu or 0) * 1e3:.2f} ms CPU); 1 worker + 1 ps: "
        f"compute {cal.worker_compute * 1e3:.2f} ms, {(cal.step_cpu or 0) * 1e3:.2f} ms CPU per step, "
        f"{(cal.bytes_in + cal.bytes_out) / 1e3:.0f} kB; a second ps adds {(cal.ps_cpu or 0) * 1e3:.2f} ms CPU; "
        f"all-reduce fixed cost {cal.allreduce_overhead * 1e3:.2f} ms, {(cal.allreduce_cpu or 0) * 1e3:.2f} ms CPU per replica"
    )


def report(saved: dict, work: pathlib.Path) -> None:
    """The tables: every shape predicted beside measured, and the bar per setting."""
    calibrations = {name: Calibration.from_json(doc, "saved") for name, doc in saved["calibrations"].items()}
    LEFT.update(calibrations)
    LINK_CPU.update(saved.get("link_cpu", {}))  # a run saved before it was measured: none
    wanted = [tuple(s) for s in saved["shapes"]]
    measured: dict[tuple[int, float], dict] = {}
    for job in saved["jobs"]:
        measured.setdefault((job["batch"], job["mbit"]), {})[job["workers"], job["ps"]] = job
    print()
    print(
        "| link | batch | shape | predicted examples/s | measured | error | plan's step: compute / transfer / waiting (ms) "
        "| cores to others / interrupts | predicted on the cores others left | its error |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    errors, summary = [], []
    every_guess, every_got, taus, passed = [], [], [], True
    for (batch, mbit), jobs in measured.items():
        cal = of_setting(calibrations, batch, mbit)
        result = shapes.plan_for(cal, work, mbit, wanted, link_cpu=LINK_CPU.get(str(mbit), 0.0))
        guess = shapes.predicted(result)
        for key in wanted:
            shape, name = guess[key], shapes.label(*key)
            if shape.problem:
                print(f"| {link_label(mbit)} | {batch} | {name} | refused | not run | | {shape.problem} | | | |")
                continue
            if key not in jobs:
                continue
            got = jobs[key]["examples_per_sec"]
            error = shape.examples_per_sec / got - 1
            errors.append((abs(error), error, f"{name}, {link_label(mbit)}, batch {batch}"))
            parts = shape.parts
            print(
                f"| {link_label(mbit)} | {batch} | {name} | {shape.examples_per_sec:.0f} | {got:.0f} | {error:+.0%} | "
                f"{parts.compute * 1e3:.1f} / {parts.transfer * 1e3:.1f} / {parts.waiting * 1e3:.1f} | "
                f"{cores(jobs[key].get('others'))} / {cores(jobs[key].get('kernel'))} | {left(jobs[key], got)} |"
            )
        ran = list(jobs)
        guesses = [guess[k].examples_per_sec for k in ran]
        gots = [jobs[k]["examples_per_sec"] for k in ran]
        every_guess += guesses
        every_got += gots
        tau = shapes.kendall_tau(guesses, gots)
        taus.append(tau)
        worst = max((g / m - 1 for g, m in zip(guesses, gots, strict=True)), key=abs)
        rec = (result.recommended.workers, result.recommended.ps)
        fastest = max(ran, key=lambda k: jobs[k]["examples_per_sec"])
        ratio = jobs[rec]["examples_per_sec"] / jobs[fastest]["examples_per_sec"] if rec in jobs else float("nan")
        ok = abs(worst) <= ERROR_BAR and ratio >= 1 - PICK_BAR
        passed &= ok
        summary.append(
            f"| {link_label(mbit)} | {batch} | {tau:.2f} | {worst:+.0%} | {shapes.label(*rec)} | "
            f"{shapes.label(*fastest)} | {ratio:.0%} | {'met' if ok else 'MISSED'} |"
        )
    print()
    print(
        "| link | batch | Kendall's tau | worst error | recommended | measured fastest "
        "| recommended's measured / fastest's | bar |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(summary))
    worst = max(errors)
    print()
    print(
        f"Kendall's tau over every point: {shapes.kendall_tau(every_guess, every_got):.2f}, the settings' mean "
        f"{statistics.mean(taus):.2f}; worst error {worst[1]:+.0%} ({worst[2]}); "
        f"{sum(e <= ERROR_BAR for e, _, _ in errors)}/{len(errors)} within 20%; bar {'met' if passed else 'MISSED'}"
    )
    for batch, mbit in measured:
        print(f"  {shapes.command(batch, mbit)}")


if __name__ == "__main__":
    main()
