"""`pmlctl plan` against the test hosts: jobs of every shape on hosts whose links all run at one
rate, measured, beside what plan predicts for a machine that describes those hosts.

The hosts: a lab (tests/hosts/network.py) with a host for each task of the largest shape (a
chief, 3 workers, 2 ps); each shape's job runs in the hosts it needs (tests/hosts/supervise.py).
Every host's link is shaped by `tbf` both ways to the rate, with no burst beyond one 64 KiB
segment (as bench/network_cost.py shapes the ps's): a step's weights take their size over the
rate, as on a wire. So every machine of a shape has that egress, which is what plan's machine
table says of a machine, and all of them share this machine's cores: the machine plan is given
is `testhost`, with `egress_gbps` the link's rate and `shared_cores` this machine's CPUs.

The prediction is plan's own path: the calibration `pmlctl plan` probes (deploy/calibrate.py,
once per batch, cached by the job's fingerprint as the command caches it), the machine table
with the test host added as `--machines FILE` adds it (deploy/machines.py), and
deploy/planning.py's `plan`, which the command calls.

The measurement: examples/s is the median of the epochs after the first (metrics.jsonl), as
bench/network_cost.py and bench/throughput.py take it.

Used by bench/plan_accuracy.py (the whole table) and tests/hosts/test_plan_accuracy.py (a
subset, the bar of issue 27).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import yaml

from deploy import calibrate, machines, planning
from deploy.spec import JobSpec
from hosts.network import Lab
from hosts.supervise import HostTarget, names
from pml_trainer.cpus import TASKS_ON_MACHINE

MODEL = {"dataset": "fashion_mnist", "model": "mlp"}  # the default MLP, as bench/network_cost.py runs it
# (workers, ps): one process, mirrored workers (ps 0; the chief trains too) and ps jobs.
SHAPES = [(0, 0), (1, 0), (2, 0), (3, 0), (1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)]
# The round trip between two hosts: bench/RESULTS.md measured 102 us with a TCP echo (bench/network_cost.py).
RTT = 0.0001
PROBE_STEPS = 100  # `pmlctl plan`'s --probe-steps default
HOST = "testhost"
VALIDATION = 0.1  # the trainer's default validation split
TRAIN_SET = 60000  # fashion_mnist's training images


def label(workers: int, ps: int) -> str:
    if workers == 0:
        return "1 process"
    return f"{workers}x{ps}" if ps else f"{workers} mirrored"


def lab_hosts() -> list[str]:
    """A host for each task of the largest shape."""
    return names(JobSpec(replicas={"workers": max(w for w, _ in SHAPES), "ps": max(p for _, p in SHAPES)}))


def shape_links(lab: Lab, mbit: float) -> None:
    """Every host's link at `mbit` Mbit/s each way, with no burst beyond one 64 KiB segment."""
    for host in lab.hosts:
        lab.shape(host, mbit, burst_ms=0)


def job_spec(workers: int, ps: int, batch: int, **trainer) -> JobSpec:
    """The job of this shape. Its tasks share this machine's cores, as plan's machine says and as
    the calibration's probe (the local target) knows; but on the hosts each task is named by a
    host of its own and would size its thread pools to every core (trainer/cpus.py), 2 threads
    per op for up to 6 tasks on 2 cores. PML_TASKS_ON_MACHINE tells it, as the Docker target
    tells its containers (deploy/docker.py): then each takes its share, as the probe's tasks did."""
    return JobSpec(
        replicas={"workers": workers, "ps": ps},
        env={TASKS_ON_MACHINE: str(1 + workers + ps)},  # the chief, the workers, the ps
        trainer={**MODEL, "batch_size": batch, **trainer},
    )


def calibration(batch: int, say=print, fresh: bool = False) -> planning.Calibration:
    """`pmlctl plan`'s calibration of the job at `batch` on this machine: the cached one, or a
    probe (`fresh`: a probe whatever is cached, as `plan --recalibrate`)."""
    spec = JobSpec(trainer={**MODEL, "batch_size": batch})  # as `pmlctl plan` builds it from the flags
    found = None if fresh else calibrate.cached(spec, "local", PROBE_STEPS)
    return found or calibrate.measure(spec, "local", PROBE_STEPS, say)


# Run inside a host: a sink that reads one connection to its end, then answers one byte.
SINK = r"""
import socket, sys
with socket.create_server(("", int(sys.argv[1]))) as server:
    print("ready", flush=True)
    conn, _ = server.accept()
    with conn:
        while conn.recv(1 << 20):
            pass
        conn.sendall(b"k")
"""
# Run inside a host: send N bytes to the sink; print the CPU seconds the whole machine spent
# meanwhile, less what it spent as long again with nothing sent (its other work). Busy is user,
# nice, system, irq and softirq in /proc/stat (guest time is in user already; steal is not ours).
SEND = r"""
import pathlib, socket, sys, time
def busy():
    user, nice, system, idle, iowait, irq, softirq = (int(n) for n in pathlib.Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / float(sys.argv[4])
chunk = b"x" * (1 << 20)
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=120) as conn:
    began, started = busy(), time.monotonic()
    for _ in range(int(sys.argv[3]) >> 20):
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    spent, lasted = busy() - began, time.monotonic() - started
idle = busy()
time.sleep(lasted)
print(spent - (busy() - idle))
"""
LINK_PORT = 7100
LINK_SECONDS = 3.0  # how long the transfer takes at the link's rate


def link_cpu_per_gb(lab: Lab, mbit: float, rounds: int = 3) -> float:
    """The CPU seconds a GB costs this machine to move between two of the lab's hosts through their
    shaped links, beyond what it costs over one host's loopback (where the calibration's probes
    ran): bulk TCP transfers, measured as the machine's whole busy time meanwhile; the median of
    `rounds` (a few seconds of this machine's other work move one by half)."""
    sender, receiver = list(lab.hosts)[:2]
    size = max(int(LINK_SECONDS * mbit * 1e6 / 8) >> 20, 8) << 20
    found = []
    for _ in range(rounds):
        spent = {
            where: _bulk_cpu(lab, sender, host, to, size)
            for where, (host, to) in {
                "link": (receiver, lab.hosts[receiver].address),
                "loopback": (sender, "127.0.0.1"),
            }.items()
        }
        found.append(max(spent["link"] - spent["loopback"], 0.0) / size * 1e9)
    return statistics.median(found)


def _bulk_cpu(lab: Lab, sender: str, host: str, to: str, size: int) -> float:
    """The machine's busy CPU seconds while `sender` sends `size` bytes to the sink in `host` at `to`."""
    sink = subprocess.Popen(
        [*lab.exec_argv(host), sys.executable, "-c", SINK, str(LINK_PORT)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sink.stdout.readline().strip() == "ready", f"the sink in {host} did not start"
        done = subprocess.run(
            [*lab.exec_argv(sender), sys.executable, "-c", SEND, to, str(LINK_PORT), str(size), str(TICK)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return float(done.stdout)
    finally:
        sink.kill()
        sink.wait()


def machine_file(folder: pathlib.Path, mbit: float, shared: float | None = None, link_cpu: float = 0.0) -> pathlib.Path:
    """The test host as `pmlctl plan --machines FILE` takes a machine: its link's rate as egress,
    this machine's cores shared by every task (or `shared` of them), and what a GB moved between
    hosts costs them (link_cpu_per_gb)."""
    cores = len(os.sched_getaffinity(0))
    doc = {
        "machines": {
            HOST: {
                "vcpus": cores,
                "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
                "egress_gbps": mbit / 1000,
                "usd_per_hour": 0.0,
                "shared_cores": shared or cores,
                "link_cpu_per_gb": round(link_cpu, 3),
            }
        }
    }
    path = folder / f"testhost-{mbit:g}{'' if shared is None else f'-{shared:.2f}'}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def plan_for(
    cal: planning.Calibration,
    folder: pathlib.Path,
    mbit: float,
    shapes=SHAPES,
    shared: float | None = None,
    link_cpu: float = 0.0,
) -> planning.Result:
    """What `pmlctl plan --machines FILE -m testhost --rtt RTT` answers for these shapes."""
    table = machines.load(machine_file(folder, mbit, shared, link_cpu))
    workers = sorted({w for w, _ in shapes})
    ps = sorted({p for _, p in shapes})
    return planning.plan(cal, table, [planning.Roles(table.get(HOST))], workers, ps, epochs=1, rtt=RTT)


def predicted(result: planning.Result) -> dict[tuple[int, int], planning.Shape]:
    return {(s.workers, s.ps): s for s in result.shapes + result.refused}


def command(batch: int, mbit: float) -> str:
    """The plan command that makes the same prediction."""
    return (
        f"pmlctl plan --dataset fashion_mnist --model mlp --batch-size {batch} --machines testhost-{mbit:g}.yaml "
        f"-m {HOST} --workers 0..3 --ps 0..2 --rtt {RTT}"
    )


@dataclass
class Measured:
    workers: int
    ps: int
    batch: int
    mbit: float
    examples_per_sec: float
    epochs: list[float]  # each epoch's examples/s
    steps_per_epoch: int
    seconds: float  # the job's wall time, start-up included
    load: str
    others: float | None = None  # cores other processes than the job's took during its measured epochs
    kernel: float | None = None  # cores the machine's interrupts took then (the packets' handling, mostly)

    @property
    def label(self) -> str:
        return label(self.workers, self.ps)


def steps_for(seconds: float, rate: float, batch: int, lowest: int = 20, highest: int = 600) -> int:
    """Steps per epoch for an epoch of about `seconds` at `rate` examples/s (the data set allowing)."""
    return min(max(lowest, min(highest, math.ceil(seconds * rate / batch))), most_steps(batch))


def most_steps(batch: int) -> int:
    """An epoch of the whole training set, less the validation split."""
    return int(TRAIN_SET * (1 - VALIDATION)) // batch


def epochs_for(seconds: float, rate: float, batch: int, epochs: int) -> int:
    """Enough epochs that those measured last about (epochs - 1) x `seconds` at `rate`, where the data
    set makes an epoch shorter than `seconds` (one process is that fast)."""
    measured = (epochs - 1) * seconds * rate / batch  # steps
    return max(epochs, 1 + math.ceil(measured / steps_for(seconds, rate, batch)))


def run_shape(
    target: HostTarget,
    work: pathlib.Path,
    name: str,
    workers: int,
    ps: int,
    batch: int,
    mbit: float,
    steps: int,
    epochs: int,
) -> Measured:
    """One job of this shape on the lab's hosts, `steps` steps per epoch; its examples/s, and the
    CPU the machine spent beside it while the measured epochs ran."""
    model_dir = work / name
    examples = math.ceil(steps * batch / (1 - VALIDATION)) + 1  # the trainer keeps 10% back
    spec = job_spec(workers, ps, batch, epochs=epochs, train_examples=examples, model_dir=str(model_dir))
    spec = spec.model_copy(update={"name": name})
    metrics = model_dir / "metrics.jsonl"
    began = time.monotonic()
    handle = target.submit(target.plan(spec, {"max_restarts": 0, "verbose": False}))
    spent: dict[int, float] = {}  # each task's CPU seconds, as last seen
    readings: dict[int, tuple[float, float, float, float]] = {}  # epoch -> (when, the job's CPU, the machine's)
    rows: list[dict] = []
    try:
        while time.monotonic() - began < 900:
            status = target.status(handle)
            for task in status.tasks:
                if task.pid:
                    spent[task.pid] = _cpu_of(task.pid) or spent.get(task.pid, 0.0)
            rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
            for wanted in (1, epochs):
                if len(rows) >= wanted and wanted not in readings:
                    readings[wanted] = (time.monotonic(), sum(spent.values()), *_machine_cpu())
            if status.finished:
                break
            time.sleep(0.2)  # a poll of the job's progress, not a synchronisation
        outcome = target.wait(handle, timeout=60)
    finally:
        if not target.status(handle).finished:
            target.delete(handle)
    seconds = time.monotonic() - began
    if outcome.phase != "Succeeded" or len(rows) < 2:
        raise RuntimeError(f"job {name} ({label(workers, ps)}) did not finish: {outcome.message}")
    rates = [r["examples_per_sec"] for r in rows]
    load = pathlib.Path("/proc/loadavg").read_text().split()[0]
    others = kernel = None
    if len(readings) == 2:
        (t0, job0, tasks0, irq0), (t1, job1, tasks1, irq1) = readings[1], readings[epochs]
        others = max(tasks1 - tasks0 - (job1 - job0), 0.0) / (t1 - t0)
        kernel = (irq1 - irq0) / (t1 - t0)
    return Measured(
        workers, ps, batch, mbit, statistics.median(rates[1:]), rates, rows[0]["step"], seconds, load, others, kernel
    )


TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float | None:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def _machine_cpu() -> tuple[float, float]:
    """CPU seconds this machine's processes have spent (user, nice, system), and its interrupts'
    (irq, softirq: much of the network's packet handling)."""
    numbers = [int(n) for n in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = numbers[:7]
    return (user + nice + system) / TICK, (irq + softirq) / TICK


def kendall_tau(xs: list[float], ys: list[float]) -> float:
    """Kendall's tau-b between two orders (ties in either count for neither side)."""
    concordant = discordant = tied_x = tied_y = 0
    n = len(xs)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tied_x += 1
            elif dy == 0:
                tied_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + tied_x) * (concordant + discordant + tied_y))
    return (concordant - discordant) / denominator if denominator else 0.0
