"""Throughput of a parameter-server job against its parameter server's link, and a cost model.

1 chief, 2 workers and 1 ps (`pmlctl submit --workers 2 --ps 1`, the trainer as it is) run on
test hosts: a network namespace each, joined by a switch (tests/hosts/network.py). The ps's link
is shaped to 100 Mbit/s, 1 Gbit/s or left alone, at batch 256 and 1024. The network: the default
MLP (2 hidden layers of 128, the model of bench/throughput.py's ps rows) on the real fashion_mnist.

Measured for each point, run --rounds times (each round runs every point once, the links in
another order each round, so that the machine's other work weighs on all alike); the table gives
the medians over the rounds:
  examples/s    the median of the epochs after the first (metrics.jsonl), as bench/throughput.py;
  step time     what one worker takes per step: W x batch / examples/s (W = 2 workers, --workers);
  bytes/step    the counters of the workers' links and of the ps's link, from the end of epoch 1
                to the end of the last epoch, divided by the steps between; beside the model's
                parameter bytes P (its trainable variables, counted by building it);
and, once: the round-trip time between two hosts (a TCP echo), the rate a bulk TCP transfer gets
over each link setting and the time one message of P bytes takes, and in a short traced run the
RecvTensor RPCs each task asks for per step.

The cost model is deploy/costmodel.py's, which `pmlctl plan` predicts with: its docstring gives
the formulas (alone, t_step, examples/s, with the refinements plan's check on the test hosts found).
How this bench came to each of their first terms:

  - c is the compute time of one worker's step while the job's W workers run: on machines of their
    own, what one worker takes alone; here, where every task shares 2 cores, what each takes beside
    the others (about twice as long: see the calibration's two figures). Compute and transfers add
    up: a worker whose compute the other slowed still waits for its transfers afterwards. (A first
    version took c from one worker alone and capped examples/s at what the W workers reach on
    unshaped links, as if the cores and the link did not add up: 51% too high at the knee, batch 256
    on 1 Gbit/s. bench/RESULTS.md has both.)
  - The second term of t_step: a transfer that meets another worker's in the same direction shares
    the link with it. Nothing keeps the workers' steps in step or apart (two transfers that meet
    both slow down alike, so the offset between them stays), so the offset is as good as random:
    two transfers of length T meet when they start within T of each other, in 2T of every `alone`
    seconds, and then each loses T/2 on average: T^2 / alone per transfer and other worker. A fluid
    simulation of two workers whose compute times vary by 5-20% gives t_step within 5% of this.
  - B x R / max(d_in, d_out): W transfers in one direction cannot pass more than R together.
Nothing is fitted per point; every parameter comes from runs or probes of its own:
  c           calibration runs with the job's W workers on unshaped links (one per round, runs of
              their own, not those of the unlimited point), less their transfers and round trip:
              c = t_step(W workers, unshaped) - (d_in + d_out) / R_free - k x RTT - the meeting term;
  c_1         the same with 1 worker (one run per round): printed, not used on this machine; it is
              the c of machines of their own, as the study's prediction below uses;
  d_in, d_out the worker's bytes per step in the 1-worker calibration runs;
  R           the rate a bulk TCP transfer gets from the ps to a worker over the link as shaped,
              measured (R_free on the unshaped link): the payload rate, below the tbf's wire rate;
  k, RTT      k = 1 (ROUND_TRIPS in deploy/costmodel.py), RTT measured with the TCP echo.

Needs root (network namespaces). Run it alone on the machine's CPUs:

    flock -x /tmp/pml-cpu.lock .venv/bin/python bench/network_cost.py [--rounds 3] [--epochs 6]
        [--batches 256,1024] [--links 100,1000,0]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(ROOT))

from hosts.network import Lab, LabError  # noqa: E402
from hosts.supervise import HostTarget, host_name, names  # noqa: E402

from deploy import jobs  # noqa: E402
from deploy.costmodel import Model  # noqa: E402  (the cost model: one copy, in the package)
from deploy.spec import JobSpec  # noqa: E402

PS = host_name("ps", 0)  # the one parameter server's host
FIRST_WORKER = host_name("worker", 0)
MODEL = {"dataset": "fashion_mnist", "model": "mlp"}  # the trainer's default MLP: 2 hidden layers of 128
BULK = 24 << 20  # what the bulk transfer sends to measure a link's rate

# Run inside a host: answer each connection either by echoing what it sends (the round trip),
# or, when it begins with "send N", by sending N bytes and closing.
SERVER = r"""
import socket, socketserver, sys

class Probe(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        asked = self.request.recv(64)
        if asked.startswith(b"send "):
            self.request.sendall(b"x" * int(asked.split()[1]))
            return
        while asked:
            self.request.sendall(asked)
            asked = self.request.recv(64)

with socketserver.TCPServer(("", int(sys.argv[1])), Probe) as server:
    print("ready", flush=True)
    server.serve_forever()
"""
# Run inside a host: the median round trip of N one-byte echoes, or the time N bytes take to
# arrive once asked for (seconds).
CLIENT = r"""
import socket, statistics, sys, time
host, port, what, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
with socket.create_connection((host, port), timeout=60) as conn:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if what == "echo":
        times = []
        for _ in range(n):
            began = time.perf_counter()
            conn.sendall(b"x")
            conn.recv(1)
            times.append(time.perf_counter() - began)
        print(statistics.median(times[n // 10:]))
    else:
        began, got = time.perf_counter(), 0
        conn.sendall(b"send %d" % n)
        while data := conn.recv(1 << 20):
            got += len(data)
        assert got == n, got
        print(time.perf_counter() - began)
"""
PORT = 7000

# The study's cluster, on paper, with the same model (bench/RESULTS.md says where each figure comes from).
STUDY_BATCH = 32
# 6 workers and the master, which trains too: a TF 1.x Estimator's master runs
# _start_distributed_training as the workers do (_TrainingExecutor.run_master, tensorflow_estimator's
# estimator/training.py; the study ran train_and_evaluate on AI Platform's runtime 1.10).
STUDY_REPLICAS = 7
STUDY_LOCAL_STEP = 265.0 / 2936  # seconds: its local flowers epochs took 261-270 s for 2936 steps of 32
# GCP caps a VM's egress by its machine type: an n1-standard-8 (8 vCPUs, as the study's ps) "is limited
# to 16 Gbps" (https://cloud.google.com/compute/docs/network-bandwidth), and its 16-vCPU workers to no
# less. Taken as what a transfer gets; the same page warns that the cap is reached only in specific
# situations, so the prediction is also made at an eighth of it.
STUDY_RATES = (16e9 / 8, 2e9 / 8)  # bytes/s
STUDY_RTT = 0.0002  # seconds, assumed for two VMs of one zone; 1 ms would move the prediction by 1%
STUDY_MEASURED = (0.2997, 0.3617)  # its distributed time as a fraction of its local time (3 and 1 epochs)
# TensorFlow logs every RecvTensor RPC a task asks for at VLOG(1) (GrpcRemoteWorker::RecvTensorAsync,
# tensorflow/core/distributed_runtime/rpc/grpc_remote_worker.cc): a short run with this on counts them.
TRACE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "grpc_remote_worker=1"}
RECV_TENSOR = re.compile(r"^I\d{4} \d\d:\d\d:(\d+\.\d+) .*RecvTensorAsync req")  # the time: seconds since 1970


@dataclass
class Point:
    workers: int
    batch: int
    mbit: float  # 0: unshaped
    examples_per_sec: float
    steps: int  # between the counters' two readings
    worker_in: float  # bytes per step into the workers (summed over both), from their links' counters
    worker_out: float
    ps_bytes: float  # bytes per step through the ps's link, both ways (checkpoints and validation included)
    load: str
    window: tuple[float, float]  # the wall-clock times of the counters' two readings

    @property
    def step_seconds(self) -> float:
        """One worker's time per step."""
        return self.workers * self.batch / self.examples_per_sec


def load() -> str:
    return pathlib.Path("/proc/loadavg").read_text().split()[0]


def parameter_bytes(options: dict, input_shape: tuple[int, ...], classes: int) -> tuple[int, int]:
    """A model's trainable bytes and variables, counted by building it (TensorFlow, in a child)."""
    program = (
        "import json; from pml_trainer import models; from pml_trainer.options import TrainOptions\n"
        f"m = models.build(TrainOptions(**{options!r}), {input_shape!r}, {classes})\n"
        "print(json.dumps([sum(v.numpy().nbytes for v in m.trainable_variables), len(m.trainable_variables)]))"
    )
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True)
    size, count = json.loads(done.stdout.splitlines()[-1])
    return size, count


class Probe:
    """The echo and bulk server in the ps's host, and the client in a worker's."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.server = subprocess.Popen(
            [*lab.exec_argv(PS), sys.executable, "-c", SERVER, str(PORT)], stdout=subprocess.PIPE, text=True
        )
        if self.server.stdout.readline().strip() != "ready":
            raise SystemExit("the probe server in the ps's host did not start")

    def _ask(self, what: str, n: int) -> float:
        done = subprocess.run(
            [*self.lab.exec_argv(FIRST_WORKER), sys.executable, "-c", CLIENT, PS, str(PORT), what, str(n)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return float(done.stdout)

    def rtt(self) -> float:
        return self._ask("echo", 2000)

    def seconds(self, size: int) -> float:
        """How long `size` bytes take from the ps to a worker, asked for on a fresh connection."""
        return self._ask("bytes", size)

    def close(self) -> None:
        self.server.kill()
        self.server.wait()


def shaped(lab: Lab, mbit: float) -> None:
    if mbit:
        # No burst beyond one 64 KiB segment: a step's weights then take their size over the rate,
        # as on a wire; with tbf's usual bucket of 10 ms at the rate, 1 Gbit/s would pass them whole
        # at the veth's own speed whenever the link had been idle for 4 ms.
        lab.shape(PS, mbit, burst_ms=0)
    else:
        try:
            lab.unshape(PS)
        except subprocess.CalledProcessError:  # never shaped: nothing to remove
            pass


def worker_hosts(workers: int) -> list[str]:
    return [host_name("worker", i) for i in range(workers)]


def traffic(lab: Lab, workers: int) -> dict[str, dict[str, int]]:
    return {host: lab.counters(host) for host in [PS, *worker_hosts(workers)]}


def run_point(
    lab: Lab,
    target: HostTarget,
    work: pathlib.Path,
    name: str,
    workers: int,
    batch: int,
    mbit: float,
    epochs: int,
    env: dict[str, str] | None = None,
) -> Point:
    """One job on the lab with the ps's link at `mbit` (0: unshaped); the counters are read at the
    end of the first epoch and of the last, as the chief's metrics.jsonl shows them."""
    shaped(lab, mbit)
    model_dir = work / name
    spec = JobSpec(
        name=name,
        replicas={"workers": workers, "ps": 1},
        env=env or {},
        trainer={**MODEL, "batch_size": batch, "epochs": epochs, "model_dir": str(model_dir)},
    )
    handle = target.submit(target.plan(spec, {"max_restarts": 0, "verbose": False}))
    metrics, readings, started = model_dir / "metrics.jsonl", {}, time.monotonic()
    while True:
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        for wanted in (1, epochs):
            if len(rows) >= wanted and wanted not in readings:
                readings[wanted] = (rows[wanted - 1]["step"], traffic(lab, workers), time.time())
        status = target.status(handle)
        if status.finished:
            break
        if time.monotonic() - started > 3600:
            raise SystemExit(f"job {name} still running after an hour; see {status.tasks[0].log}")
        time.sleep(0.05)
    outcome = target.wait(handle, timeout=60)
    if outcome.phase != "Succeeded" or len(readings) < 2:
        raise SystemExit(f"job {name} did not finish: {outcome.message}")
    (first_step, before, began), (last_step, after, ended) = readings[1], readings[epochs]
    steps = last_step - first_step

    def per_step(hosts, way):
        return sum(after[h][way] - before[h][way] for h in hosts) / steps

    rates, hosts = [r["examples_per_sec"] for r in rows], worker_hosts(workers)
    return Point(
        workers,
        batch,
        mbit,
        statistics.median(rates[1:]),
        steps,
        per_step(hosts, "received"),
        per_step(hosts, "sent"),
        per_step([PS], "sent") + per_step([PS], "received"),
        load(),
        (began, ended),
    )


def rpcs_per_step(name: str, point: Point) -> dict[str, float]:
    """RecvTensor RPCs each role asked for per step, between the counters' two readings of a traced run."""
    counts = {}
    for role, hosts in (("workers", worker_hosts(point.workers)), ("ps", [PS]), ("chief", [host_name("chief", 0)])):
        asked = 0
        for host in hosts:
            for line in (jobs.job_dir(name) / f"{host}.log").read_text(errors="replace").splitlines():
                found = RECV_TENSOR.match(line)
                asked += bool(found and point.window[0] <= float(found.group(1)) <= point.window[1])
        counts[role] = asked / point.steps
    return counts


def calibrate(alone: list[Point], together: list[Point], free_rate: float, rtt: float) -> tuple[Model, float]:
    """The model from runs on unshaped links (medians): c from the job's W workers, d_in and d_out from
    one worker's runs; and c_1, one worker's compute on its own."""
    median = statistics.median
    d_in, d_out = median(r.worker_in for r in alone), median(r.worker_out for r in alone)
    shape = Model(together[0].workers, 0.0, d_in, d_out, rtt)
    one = Model(1, 0.0, d_in, d_out, rtt).with_compute_of(median(r.step_seconds for r in alone), free_rate)
    return shape.with_compute_of(median(r.step_seconds for r in together), free_rate), one.compute


def link_label(mbit: float) -> str:
    return "unlimited" if not mbit else f"{mbit / 1000:g} Gbit/s" if mbit >= 1000 else f"{mbit:g} Mbit/s"


def rounds(runs: list[Point]) -> str:
    return " / ".join(f"{r.examples_per_sec:.0f}" for r in runs)


def row(runs: list[Point], model: Model, rate: float, size: int) -> tuple[str, float]:
    """The table's row for the runs of one point (medians over the rounds), and the model's error."""
    first, median = runs[0], statistics.median
    measured = median(r.examples_per_sec for r in runs)
    predicted = model.examples_per_sec(first.batch, rate)
    error = predicted / measured - 1
    step_ms = median(r.step_seconds for r in runs) * 1e3
    workers_bytes = median(r.worker_in + r.worker_out for r in runs)
    return (
        f"| {first.batch} | {link_label(first.mbit)} | {measured:.0f} | {rounds(runs)} | {step_ms:.1f} | "
        f"{workers_bytes:.0f} | {median(r.ps_bytes for r in runs):.0f} | {size} | {predicted:.0f} | {error:+.0%} | "
        f"{' '.join(r.load for r in runs)} |"
    ), error


def study_prediction() -> str:
    """The study's cluster on paper: each of its 7 replicas reads every weight and sends every gradient
    per step, computing as fast as its local machine did (an assumption: the only speed it reported).
    Its flower network is the trainer's cnn (tests/test_models.py ties the two) on 64x64x3 images, 5 classes."""
    size, _ = parameter_bytes({"model": "cnn"}, (64, 64, 3), 5)
    model, local = Model(STUDY_REPLICAS, STUDY_LOCAL_STEP, size, size, STUDY_RTT), STUDY_BATCH / STUDY_LOCAL_STEP
    lines = [
        f"the study's cluster on paper: P = {size} bytes, c = {STUDY_LOCAL_STEP * 1e3:.1f} ms, "
        f"{STUDY_REPLICAS} replicas; measured: {STUDY_MEASURED[0]:.0%}-{STUDY_MEASURED[1]:.0%} of the local time"
    ]
    for rate in STUDY_RATES:
        step, transfer = model.step_seconds(rate), size / rate
        predicted = model.examples_per_sec(STUDY_BATCH, rate)
        lines.append(
            f"  at {rate * 8 / 1e9:g} Gbit/s: t_step {step * 1e3:.1f} ms ({2 * transfer * 1e3:.2f} ms of "
            f"transfers), {predicted:.0f} examples/s against {local:.0f} locally: {local / predicted:.1%} "
            f"of the local time; one ps holding every weight would be {STUDY_REPLICAS * transfer / step:.0%} "
            f"busy each way, full at {step / transfer:.0f} replicas"
        )
        # distributed time / local time = t_step / (replicas x local step): the c the study's figures imply
        needed = [model.with_compute_of(f * STUDY_REPLICAS * STUDY_LOCAL_STEP, rate).compute for f in STUDY_MEASURED]
        lines.append(
            f"    the measured {STUDY_MEASURED[0]:.0%}-{STUDY_MEASURED[1]:.0%} needs c = "
            f"{needed[0] * 1e3:.0f}-{needed[1] * 1e3:.0f} ms per replica's step, "
            f"{needed[0] / STUDY_LOCAL_STEP:.1f}-{needed[1] / STUDY_LOCAL_STEP:.1f}x the local machine's"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="runs of each point, and of each calibration")
    p.add_argument("--workers", type=int, default=2, help="workers of the job (1 chief and 1 ps besides)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per run; the first is left out of the median")
    p.add_argument("--batches", default="256,1024")
    p.add_argument("--links", default="100,1000,0", help="the ps's link in Mbit/s; 0: unshaped")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: this benchmark makes network namespaces and shapes links: run it as root")
    batches = [int(b) for b in args.batches.split(",")]
    links = [float(m) for m in args.links.split(",")]
    work = pathlib.Path(tempfile.mkdtemp(prefix="pml-netcost-"))
    os.environ["PML_HOME"] = str(work / "pml-home")
    # The job's supervisor is `python -m hosts.supervise`: tests/ must be on its path.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), str(ROOT), os.environ.get("PYTHONPATH")]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    began = time.monotonic()
    size, variables = parameter_bytes(MODEL, (28, 28, 1), 10)
    print(f"machine: {os.cpu_count()} cores; commit {commit.strip() or '?'}; load average {load()}")
    print(
        f"model: {MODEL}, {variables} trainable variables, P = {size} bytes; {args.epochs} epochs per run, "
        f"{args.rounds} rounds"
    )
    try:
        lab = Lab(names(JobSpec(replicas={"workers": args.workers, "ps": 1})))
    except LabError as err:
        sys.exit(f"error: {err}")
    with lab:
        probe = Probe(lab)
        try:
            rtt = probe.rtt()
            rates, message = {}, {}  # bytes/s and seconds, by the link's setting
            for mbit in sorted(set(links) | {0}):
                shaped(lab, mbit)
                rates[mbit] = BULK / statistics.median(probe.seconds(BULK) for _ in range(3))
                message[mbit] = statistics.median(probe.seconds(size) for _ in range(3))
            shaped(lab, 0)
        finally:
            probe.close()
        print(
            f"RTT worker-ps: {rtt * 1e6:.0f} us; ps -> worker, the rate of a bulk TCP transfer and the time of one "
            "message of P bytes: "
            + "; ".join(
                f"{link_label(m)}: {r * 8 / 1e6:.0f} Mbit/s, {message[m] * 1e3:.2f} ms"
                for m, r in sorted(rates.items())
            )
        )
        target, count = HostTarget(lab), 0

        def run(
            batch: int,
            mbit: float,
            epochs: int = args.epochs,
            env: dict[str, str] | None = None,
            workers: int = args.workers,
        ) -> Point:
            nonlocal count
            count += 1
            return run_point(lab, target, work, f"netcost-{count}", workers, batch, mbit, epochs, env)

        trace = run(batches[-1], 0, epochs=3, env=TRACE_ENV)
        print(
            "RecvTensor RPCs asked for per step (a traced run): "
            + ", ".join(f"by the {role} {n:.1f}" for role, n in rpcs_per_step(f"netcost-{count}", trace).items()),
            flush=True,
        )
        alone = {batch: [] for batch in batches}  # 1 worker, unshaped: c_1, d_in, d_out
        together = {batch: [] for batch in batches}  # the job's workers, unshaped: c
        points = {(batch, mbit): [] for batch in batches for mbit in links}
        for r in range(args.rounds):
            for batch in batches:
                alone[batch].append(run(batch, 0, workers=1))
                together[batch].append(run(batch, 0))
                for mbit in links[r % len(links) :] + links[: r % len(links)]:  # each round in another order
                    points[batch, mbit].append(run(batch, mbit))
            print(
                f"round {r + 1}: "
                + "; ".join(
                    f"{link_label(m)}, batch {b}: {runs[-1].examples_per_sec:.0f}" for (b, m), runs in points.items()
                ),
                flush=True,
            )
    models, alone_compute = {}, {}
    for batch in batches:
        models[batch], alone_compute[batch] = calibrate(alone[batch], together[batch], rates[0], rtt)
        print(
            f"calibration, batch {batch}: d_in = {models[batch].d_in:.0f}, d_out = {models[batch].d_out:.0f} bytes "
            f"per step; 1 worker {rounds(alone[batch])} examples/s, so c_1 = {alone_compute[batch] * 1e3:.2f} ms; "
            f"{args.workers} workers {rounds(together[batch])} examples/s, so c = {models[batch].compute * 1e3:.2f} ms"
        )
    print()
    print(
        "| batch | ps link | examples/s | each round | step (ms) | bytes/step: workers | ps link | P "
        "| predicted examples/s | error | load average |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    errors = []
    for (batch, mbit), runs in points.items():
        line, error = row(runs, models[batch], rates[mbit], size)
        print(line)
        errors.append(error)
    print(f"worst error: {max(errors, key=abs):+.0%}; {time.monotonic() - began:.0f}s in all")
    print(study_prediction())


if __name__ == "__main__":
    main()
