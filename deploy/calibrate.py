"""The calibration of `pmlctl plan`: a short probe of this very job, cached by its fingerprint.

What plan cannot know it measures, through the target contract (deploy/target.py) like any job:
  1. `python -m pml_trainer.check -o json` with the job's flags: an epoch's examples, the parameter
     bytes and each variable's (TensorFlow runs there, never in pmlctl);
  2. short jobs of the job's own model, data and batch, `--probe-steps` steps per epoch for 3
     epochs, the first left out as warm-up: one process (a step's compute), 1 worker + 1 ps (a
     worker's compute, the bytes its step moves, the CPU the tasks spend per step), 1 worker + 2 ps
     when the model has two variables or more (the CPU and the step time a second ps adds), and 2
     mirrored replicas (the all-reduce's fixed cost, and the CPU it adds).
Readings are taken at the end of the first epoch and of the last, as metrics.jsonl shows them:
each task's CPU time (/proc/PID/stat), the bytes the tasks' network namespaces received (the local
job's own namespace, its loopback; a container's, its link to the others: /proc/PID/net/dev), and
the most memory a task held (VmHWM).

The probe reads its tasks' processes, so it runs where they are on this machine: the local target
(the default) and Docker (`-t docker`, the job's image). Other targets are refused in one line; a
calibration file (--calibration) stands in for them. The check of step 1 runs here, with this
machine's TensorFlow (the `train` extra), whatever the target. A docker probe's bytes cross the
containers' links (veth, bridge), where the local one's cross a loopback; the worker's compute is
its step less those bytes at this machine's loopback rate either way, a little high under Docker.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from deploy import jobs, registry
from deploy.costmodel import Model, chain_share
from deploy.planning import Calibration
from deploy.spec import JobSpec
from deploy.target import Note, Target
from pml_trainer import fingerprint
from pml_trainer.errors import BadInput

FORMAT = 3  # the cached calibration's layout: a new one is measured when it changes
EPOCHS = 3
# One process is the quickest probe, and its step the prediction of a whole shape: epochs of a
# fraction of a second (the default MLP's 100 steps take 0.2-1 s) vary by 2x with what else this
# machine runs (bench/RESULTS.md, the plan's check on the test hosts). It probes again, with more
# epochs, until the epochs after the first last this long together (at most LONGEST epochs).
STEADY_SECONDS = 5.0
LONGEST = 40
BULK = 16 << 20  # bytes the loopback rate is measured with


def cache_dir() -> pathlib.Path:
    return jobs.home() / "plan"


def key(spec: JobSpec, target: str, steps: int) -> str:
    """The job's fingerprint for the cache: what defines a step's cost here (the run's defining
    settings and code, the batch, the step's own options) and where it was measured."""
    opts = spec.trainer
    doc = {
        "format": FORMAT,
        "settings": fingerprint.defining_settings(opts),
        "code": fingerprint.code(opts),
        "step": [opts.batch_size, opts.steps_per_execution, opts.jit, opts.dataset, opts.data_dir, opts.augment],
        "target": target,
        "image": _image(spec, target),
        "machine": [platform.node(), len(os.sched_getaffinity(0)), _cpu_model()],
        "steps": steps,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _image(spec: JobSpec, target: str) -> str | None:
    """What a probe in containers on this machine runs: the image's ID (a rebuild keeps its tag),
    where the daemon has it; else its name."""
    chosen = registry.choose("submit", target, {})
    if not (chosen.runs_image and chosen.shows_processes):
        return None
    from deploy import docker

    found = docker.call("image", "inspect", "--format", "{{.Id}}", spec.image)
    return found.stdout.strip() if found.returncode == 0 else spec.image


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def cached(spec: JobSpec, target: str, steps: int) -> Calibration | None:
    path = cache_dir() / f"{key(spec, target, steps)}.json"
    try:
        return Calibration.from_json(json.loads(path.read_text()), str(path))
    except (OSError, ValueError, BadInput):
        return None


def from_file(path: pathlib.Path) -> Calibration:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput(f"--calibration {path}: no such file; give a calibration JSON or YAML file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"--calibration {path}: cannot read it ({err})") from None
    import yaml

    try:
        doc = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as err:
        raise BadInput(f"--calibration {path}: not valid JSON or YAML ({str(err).splitlines()[0]})") from None
    return Calibration.from_json(doc, f"--calibration {path}")


def measure(spec: JobSpec, target: str | None, steps: int, say) -> Calibration:
    """Probe the job (see the module's docstring) and cache what it found."""
    cls = registry.choose("submit", target, {})
    if not cls.shows_processes:
        raise BadInput(
            f"-t {cls.name}: the probe reads its tasks' processes, which run elsewhere; calibrate with "
            "-t local or -t docker, or give the figures with --calibration FILE"
        )
    began = time.monotonic()
    report = _check(spec)
    split = len(report["variable_bytes"]) > 1  # a second ps holds something
    say(f"calibrating: a probe of this job, {steps} steps per epoch, {EPOCHS} epochs, {4 if split else 3} short jobs")
    batch = spec.trainer.batch_size
    examples = int(report["examples_per_epoch"])
    rtt, rate = _loopback()
    work = pathlib.Path(tempfile.mkdtemp(prefix="pml-plan-"))
    chosen = cls(lambda event: say(event.text) if isinstance(event, Note) else None)
    try:
        local = _probe(chosen, spec, work, "one", 0, 0, steps, examples)
        measured = sum(local["seconds"])
        if measured < STEADY_SECONDS:
            more = min(LONGEST, 1 + math.ceil((EPOCHS - 1) * STEADY_SECONDS / max(measured, 1e-3)))
            local = _probe(chosen, spec, work, "one-longer", 0, 0, steps, examples, epochs=more)
        say(f"  one process: {local['step'] * 1e3:.2f} ms per step")
        served = _probe(chosen, spec, work, "ps", 1, 1, steps, examples)
        say(f"  1 worker + 1 ps: {served['step'] * 1e3:.2f} ms per step, {served['bytes'] / 1e3:.0f} kB per step")
        two = _probe(chosen, spec, work, "ps2", 1, 2, steps, examples) if split else None
        if two:
            say(f"  1 worker + 2 ps: {two['step'] * 1e3:.2f} ms per step")
        mirrored = _probe(chosen, spec, work, "mirrored", 1, 0, steps, examples)
        say(f"  2 mirrored replicas: {mirrored['step'] * 1e3:.2f} ms per step")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = int(sum(report["variable_bytes"])) or int(report["parameters"]) * 4
    # The loopback carries every byte of the job once: the worker's in and out, and the chief's few.
    counted = served["bytes"] is not None
    per_way = served["bytes"] / 2 if counted else float(size)
    chain = chain_share(report["variable_bytes"])
    worker = Model(1, 0.0, per_way, per_way, rtt, chain=chain).with_compute_of(served["step"], rate).compute
    cores = len(os.sched_getaffinity(0))
    # Two replicas on this machine: each computes half the batch, on its share of the cores.
    half = max(local["step"] / 2, (local["cpu"] or 0.0) / cores)
    overhead = max(mirrored["step"] - half - (size / rate + 2 * rtt), 0.0)
    # Two replicas spend the one process's CPU on the batch between them, and the rest on the all-reduce.
    reducing = _more_cpu(local["cpu"], mirrored["cpu"])
    cal = Calibration(
        where=f"-t {cls.name} on {platform.node()}: {cores} CPUs ({_cpu_model()}), {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{time.monotonic() - began:.0f} s",
        batch=batch,
        examples_per_epoch=examples,
        parameter_bytes=size,
        local_step=local["step"],
        worker_compute=max(worker, 1e-6),
        bytes_in=per_way,
        bytes_out=per_way,
        variable_bytes=tuple(int(v) for v in report["variable_bytes"]),
        allreduce_overhead=overhead,
        local_cpu=local["cpu"],
        step_cpu=served["cpu"],
        ps_cpu=_more_cpu(served["cpu"], two and two["cpu"]),
        ps_step=None if two is None else max(two["step"] - served["step"], 0.0),
        allreduce_cpu=None if reducing is None else reducing / 2,
        memory={
            k: v
            for k, v in (("local", local["memory"]), ("worker", served["memory"]), ("ps", served["ps_memory"]))
            if v
        },
        measured={
            "loopback_rtt": rtt,
            "loopback_rate": rate,
            "bytes_counted": counted,
            "one_process": local,
            "ps_job": served,
            "two_ps_job": two,
            "mirrored_job": mirrored,
        },
    )
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / f"{key(spec, cls.name, steps)}.json").write_text(json.dumps(cal.to_json(), indent=2))
    return cal


def _more_cpu(base: float | None, more: float | None) -> float | None:
    """What a probe's CPU per step adds to another's (not below 0), where both were read."""
    return None if base is None or more is None else max(more - base, 0.0)


def _check(spec: JobSpec) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pml_trainer.check", "--output", "json", *spec.trainer.to_argv()]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **spec.env})
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BadInput(f"the calibration's check of the task failed: {last.removeprefix('error: ')}", done.returncode)
    return json.loads(done.stdout)


def _loopback() -> tuple[float, float]:
    """This machine's loopback: the round trip of one byte, and the rate of a bulk transfer (bytes/s)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := conn.recv(1 << 20):
                    if len(data) == 1:
                        conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        trips = []
        for _ in range(200):
            began = time.perf_counter()
            conn.sendall(b"x")
            conn.recv(1)
            trips.append(time.perf_counter() - began)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        began = time.perf_counter()
        conn.sendall(b"y" * BULK)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the server closes once it has read everything
        seconds = time.perf_counter() - began
    thread.join(timeout=10)
    server.close()
    return statistics.median(trips[20:]), BULK / seconds


def _probe(
    chosen: Target,
    spec: JobSpec,
    work: pathlib.Path,
    kind: str,
    workers: int,
    ps: int,
    steps: int,
    examples: int,
    epochs: int = EPOCHS,
) -> dict[str, Any]:
    """One short job of this shape; its step time and what its tasks spent between the first
    epoch's end and the last's."""
    batch = spec.trainer.batch_size
    model_dir = work / kind
    # Enough examples for `steps` training steps, after the validation split the trainer keeps back.
    wanted = int(steps * batch / (1 - spec.trainer.validation_split)) + batch
    probe = spec.model_copy(
        update={
            "name": f"plan-probe-{kind}-{os.getpid()}",
            "replicas": spec.replicas.model_copy(update={"workers": workers, "ps": ps, "evaluator": 0}),
            "trainer": spec.trainer.model_copy(
                update={
                    "epochs": epochs,
                    "train_examples": min(wanted, examples) if spec.trainer.task is None else None,
                    "model_dir": str(model_dir),
                    "restart": True,
                }
            ),
        }
    )
    handle = chosen.submit(chosen.plan(probe, {"max_restarts": 0, "verbose": False}))
    readings: dict[int, dict[str, Any]] = {}
    memory: dict[str, float] = {}
    pids: dict[str, int] = {}  # each task's process, once found (a container's takes a call to find)
    metrics = model_dir / "metrics.jsonl"
    try:
        while True:
            status = chosen.status(handle)
            for task in status.tasks:
                if task.label not in pids and (pid := chosen.process_of(task)):
                    pids[task.label] = pid
            for label, pid in pids.items():
                memory[label] = max(memory.get(label, 0.0), _memory(pid))
            rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
            for wanted_row in (1, epochs):
                if len(rows) >= wanted_row and wanted_row not in readings:
                    readings[wanted_row] = {"step": rows[wanted_row - 1]["step"], "tasks": set(pids), **_read(pids)}
            if status.finished:
                break
            time.sleep(0.05)  # a poll of the job's progress, not a synchronisation
        outcome = chosen.wait(handle, timeout=60)
    finally:
        chosen.delete(handle)
    if outcome.phase != "Succeeded" or len(readings) < 2:
        raise BadInput(f"the calibration's probe ({kind}) did not finish: {outcome.message}")
    first, last = readings[1], readings[epochs]
    if not first["tasks"] or first["tasks"] != last["tasks"]:
        raise BadInput(
            f"the calibration's probe ({kind}) could not read its tasks' processes on this machine "
            f"(found {', '.join(sorted(last['tasks'])) or 'none'}); give the figures with --calibration FILE"
        )
    done = last["step"] - first["step"]
    rates = [r["examples_per_sec"] for r in rows[1:]]
    step = (workers if ps else 1) * batch / statistics.median(rates)
    cpu = (last["cpu"] - first["cpu"]) / done if first["cpu"] is not None and last["cpu"] is not None else None
    moved = (
        (last["bytes"] - first["bytes"]) / done if first["bytes"] is not None and last["bytes"] is not None else None
    )
    return {
        "step": step,
        "steps": done,
        "examples_per_sec": rates,
        "seconds": [r["seconds"] for r in rows[1:]],
        "cpu": cpu,
        "bytes": moved,
        "memory": max((v for k, v in memory.items() if k.startswith("worker" if workers else "chief")), default=None),
        "ps_memory": max((v for k, v in memory.items() if k.startswith("ps")), default=None),
    }


def _read(pids: dict[str, int]) -> dict[str, Any]:
    """The tasks' CPU seconds together, and the bytes their network namespaces received, each byte
    once (None where a task has gone, or a task shares this process's namespace)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu: float | None = 0.0
    for pid in pids.values():
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            cpu = (cpu or 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            cpu = None
            break
    moved: float | None = None
    try:
        spaces = {os.stat(f"/proc/{pid}/ns/net").st_ino: pid for pid in pids.values()}
        if spaces and os.stat("/proc/self/ns/net").st_ino not in spaces:
            moved = sum(_received(pid) for pid in spaces.values())
    except OSError:
        pass
    return {"cpu": cpu, "bytes": moved}


def _received(pid: int) -> float:
    """The bytes every interface of the process's network namespace received: the local job's
    loopback, a container's link."""
    received = 0.0
    for line in pathlib.Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        received += float(line.partition(":")[2].split()[0])
    return received


def _memory(pid: int | None) -> float:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0
