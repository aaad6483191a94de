"""The calibration of `pmlctl plan`: a short probe of this very job, cached by its fingerprint.

What plan cannot know it measures, through the target contract (deploy/target.py) like any job:
  1. `python -m pml_trainer.check -o json` with the job's flags: an epoch's examples, the parameter
     bytes and each variable's (TensorFlow runs there, never in pmlctl);
  2. short jobs of the job's own model, data and batch, `--probe-steps` steps per epoch for 3
     epochs, the first left out as warm-up: one process (a step's compute), 1 worker + 1 ps (a
     worker's compute, the bytes its step moves, the CPU the tasks spend per step), 1 worker + 2 ps
     when the model has two variables or more (the CPU and the step time a second ps adds), and 2
     mirrored replicas (the all-reduce's fixed cost, and the CPU it adds).
Each task of a probe reports what it spent (pml_trainer.readings): its CPU time, the bytes its
network namespace received (the local job's own namespace, its loopback; a container's or a pod's,
its link to the others) and the most memory it held, sampled with the wall clock and published
into the model dir. The probe takes them between the chief's marks at the end of the first epoch
and of the last, so it reads them wherever the tasks ran.

On a target whose tasks see this machine's folders (the local target, the default, and Docker,
`-t docker`, the job's image), the probes' model dirs are temporary folders here, and a step's
transfers are reckoned at this machine's loopback rate. Elsewhere (`-t k8s`, on the machine type
the job would use) they go under the job's gs:// or s3:// model dir, as a sweep's runs do, and are
deleted after; a step's transfers are reckoned at the planned machine's rate. The check of step 1
runs here, with this machine's TensorFlow (the `train` extra), whatever the target.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from deploy import experiments, jobs, registry
from deploy.costmodel import Model, chain_share
from deploy.planning import Calibration
from deploy.spec import JobSpec
from deploy.target import Note, Target
from pml_trainer import fingerprint, readings
from pml_trainer.errors import BadInput
from pml_trainer.storage import StorageError, Store, is_remote, open_store

FORMAT = 4  # the cached calibration's layout: a new one is measured when it changes
EPOCHS = 3
# One process is the quickest probe, and its step the prediction of a whole shape: epochs of a
# fraction of a second (the default MLP's 100 steps take 0.2-1 s) vary by 2x with what else this
# machine runs (bench/RESULTS.md, the plan's check on the test hosts). It probes again, with more
# epochs, until the epochs after the first last this long together (at most LONGEST epochs).
STEADY_SECONDS = 5.0
LONGEST = 40
BULK = 16 << 20  # bytes the loopback rate is measured with
PROBE_TIMEOUT = 1800.0  # seconds: a probe's job is a few epochs of seconds, plus starting its tasks
Link = tuple[float, float]  # a round trip (s) and a rate (bytes/s)


def cache_dir() -> pathlib.Path:
    return jobs.home() / "plan"


def key(spec: JobSpec, target: str, steps: int, link: Link | None = None) -> str:
    """The job's fingerprint for the cache: what defines a step's cost here (the run's defining
    settings and code, the batch, the step's own options), where it was measured, and the link a
    step's transfers were reckoned at where not this machine's loopback."""
    opts = spec.trainer
    doc = {
        "format": FORMAT,
        "settings": fingerprint.defining_settings(opts),
        "code": fingerprint.code(opts),
        "step": [opts.batch_size, opts.steps_per_execution, opts.jit, opts.dataset, opts.data_dir, opts.augment],
        "target": target,
        "image": _image(spec, target),
        "machine": _machine(target),
        "steps": steps,
        "link": link,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _machine(target: str) -> Any:
    """Where the probe ran: this machine, for a target whose tasks run here; else the target's own
    word for where its jobs go (a cluster's kubeconfig context)."""
    chosen = registry.choose("submit", target, {})
    if chosen.sees_local_files:
        return [platform.node(), os.cpu_count(), readings.cpu_model()]
    return chosen().place()


def _image(spec: JobSpec, target: str) -> str | None:
    """The image a probe runs: in containers on this machine, its ID where the daemon has it (a
    rebuild keeps its tag); on a cluster, its name, which the nodes pull."""
    chosen = registry.choose("submit", target, {})
    if not chosen.runs_image:
        return None
    if not chosen.sees_local_files:
        return spec.image
    from deploy import docker

    found = docker.call("image", "inspect", "--format", "{{.Id}}", spec.image)
    return found.stdout.strip() if found.returncode == 0 else spec.image


def cached(spec: JobSpec, target: str, steps: int, link: Link | None = None) -> Calibration | None:
    path = cache_dir() / f"{key(spec, target, steps, link)}.json"
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


def measure(spec: JobSpec, target: str | None, steps: int, say, link: Link | None = None) -> Calibration:
    """Probe the job (see the module's docstring) and cache what it found. `link`: the round trip
    and the rate (bytes/s) a step's transfers are reckoned at, for a target whose tasks run
    elsewhere (this machine's loopback is measured for the others)."""
    cls = registry.choose("submit", target, {})
    here = cls.sees_local_files
    if not here and link is None:
        raise ValueError(f"-t {cls.name}: the probe needs the link its tasks' transfers are reckoned at")
    root = None if here else experiments.model_root(spec, cls)  # gs:// or s3://, or a refusal in one line
    began = time.monotonic()
    report = _check(spec)
    split = len(report["variable_bytes"]) > 1  # a second ps holds something
    batch = spec.trainer.batch_size
    examples = int(report["examples_per_epoch"])
    if root is None:
        work = pathlib.Path(tempfile.mkdtemp(prefix="pml-plan-"))
        root = str(work)
    say(f"calibrating: a probe of this job, {steps} steps per epoch, {EPOCHS} epochs, {4 if split else 3} short jobs")
    rtt, rate = _loopback() if here else link
    chosen = cls(lambda event: say(event.text) if isinstance(event, Note) else None)
    try:
        local = _probe(chosen, spec, root, "one", 0, 0, steps, examples)
        measured = sum(local["seconds"])
        if measured < STEADY_SECONDS:
            more = min(LONGEST, 1 + math.ceil((EPOCHS - 1) * STEADY_SECONDS / max(measured, 1e-3)))
            local = _probe(chosen, spec, root, "one-longer", 0, 0, steps, examples, epochs=more)
        say(f"  one process: {local['step'] * 1e3:.2f} ms per step")
        served = _probe(chosen, spec, root, "ps", 1, 1, steps, examples)
        moved = "bytes not counted" if served["bytes"] is None else f"{served['bytes'] / 1e3:.0f} kB per step"
        say(f"  1 worker + 1 ps: {served['step'] * 1e3:.2f} ms per step, {moved}")
        two = _probe(chosen, spec, root, "ps2", 1, 2, steps, examples) if split else None
        if two:
            say(f"  1 worker + 2 ps: {two['step'] * 1e3:.2f} ms per step")
        mirrored = _probe(chosen, spec, root, "mirrored", 1, 0, steps, examples)
        say(f"  2 mirrored replicas: {mirrored['step'] * 1e3:.2f} ms per step")
    finally:
        if here:
            shutil.rmtree(work, ignore_errors=True)
    size = int(sum(report["variable_bytes"])) or int(report["parameters"]) * 4
    # The bytes the tasks received are every byte of the job once: the worker's in and out, and the chief's few.
    counted = served["bytes"] is not None
    per_way = served["bytes"] / 2 if counted else float(size)
    chain = chain_share(report["variable_bytes"])
    worker = Model(1, 0.0, per_way, per_way, rtt, chain=chain).with_compute_of(served["step"], rate).compute
    cores = local["cpus"]
    # Two replicas on one machine: each computes half the batch, on its share of the cores.
    half = max(local["step"] / 2, (local["cpu"] or 0.0) / cores)
    overhead = max(mirrored["step"] - half - (size / rate + 2 * rtt), 0.0)
    # Two replicas spend the one process's CPU on the batch between them, and the rest on the all-reduce.
    reducing = _more_cpu(local["cpu"], mirrored["cpu"])
    cal = Calibration(
        # Containers here are named by their ID; a pod is named for its job.
        where=f"-t {cls.name} on {platform.node() if here else local['host']}: {cores} CPUs ({local['cpu_model']}), "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {time.monotonic() - began:.0f} s",
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
        # How busy the probe kept its cores: its worker's compute was stretched by the others' work there.
        probe_load=None if served["cpu"] is None else min(served["cpu"] / (served["cpus"] * served["step"]), 1.0),
        memory={
            k: v
            for k, v in (("local", local["memory"]), ("worker", served["memory"]), ("ps", served["ps_memory"]))
            if v
        },
        measured={
            "link_rtt" if not here else "loopback_rtt": rtt,
            "link_rate" if not here else "loopback_rate": rate,
            "bytes_counted": counted,
            "one_process": local,
            "ps_job": served,
            "two_ps_job": two,
            "mirrored_job": mirrored,
        },
    )
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / f"{key(spec, cls.name, steps, None if here else link)}.json").write_text(
        json.dumps(cal.to_json(), indent=2)
    )
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
    root: str,
    kind: str,
    workers: int,
    ps: int,
    steps: int,
    examples: int,
    epochs: int = EPOCHS,
) -> dict[str, Any]:
    """One short job of this shape, in a model dir of its own under `root`; its step time and
    what its tasks spent between the chief's marks at the first epoch's end and the last's."""
    batch = spec.trainer.batch_size
    name = f"plan-probe-{kind}-{secrets.token_hex(3)}"  # a pid repeats from one container to the next
    model_dir = f"{root.rstrip('/')}/{name}"
    # Enough examples for `steps` training steps, after the validation split the trainer keeps back.
    wanted = int(steps * batch / (1 - spec.trainer.validation_split)) + batch
    probe = spec.model_copy(
        update={
            "name": name,
            "env": {**spec.env, readings.ENV: "1"},
            "replicas": spec.replicas.model_copy(update={"workers": workers, "ps": ps, "evaluator": 0}),
            # A restarted chief would mark its epochs again from where it resumed: a probe runs once
            # (Kubeflow counts no ExitCode restart against the backoff limit: pkg/core/job.go).
            "policy": spec.policy.model_copy(update={"backoff_limit": 0, "restart_policy": "Never"}),
            "trainer": spec.trainer.model_copy(
                update={
                    "epochs": epochs,
                    "train_examples": min(wanted, examples) if spec.trainer.task is None else None,
                    "model_dir": model_dir,
                    "restart": True,
                }
            ),
        }
    )
    store = open_store(model_dir, experiments.endpoint(probe))
    own = readings.space() if chosen.sees_local_files else None
    expected = ["chief-0", *(f"worker-{i}" for i in range(workers)), *(f"ps-{i}" for i in range(ps))]
    try:
        handle = chosen.submit(chosen.plan(probe, {"max_restarts": 0, "verbose": False}))
        try:
            outcome = chosen.wait(handle, timeout=PROBE_TIMEOUT)
        finally:
            chosen.delete(handle)  # once every task has exited: their last uploads are in
        if outcome.phase != "Succeeded":
            raise BadInput(
                f"the calibration's probe ({kind}, job {name}) did not finish: {outcome.message}; "
                "give the figures with --calibration FILE"
            )
        return _figures(store, kind, expected, workers, ps, batch, epochs, own)
    finally:
        if is_remote(model_dir):  # a temporary folder here goes with the others
            _clean(chosen, store, model_dir)


def _clean(chosen: Target, store: Store, model_dir: str) -> None:
    """Delete a probe's remote folder; what cannot be deleted is named, not raised over the result."""
    try:
        for entry in store.list():
            store.delete(entry.name)
    except StorageError as err:
        chosen.note(f"the calibration's probe left {model_dir}: {err}; delete it when storage answers")


def _figures(
    store: Store, kind: str, expected: list[str], workers: int, ps: int, batch: int, epochs: int, own: str | None
) -> dict[str, Any]:
    """A finished probe's figures, from its model dir: metrics.jsonl and each task's readings.
    `expected`: the tasks that must have reported; `own`: this process's network namespace, where
    the tasks' bytes are not only theirs."""

    def refuse(why: str) -> BadInput:
        return BadInput(f"the calibration's probe ({kind}) {why}; give the figures with --calibration FILE")

    rows = [json.loads(line) for line in (store.get_bytes("metrics.jsonl") or b"").decode().splitlines() if line]
    try:
        tasks = readings.load({e.name: store.get_bytes(e.name) or b"" for e in store.list(readings.FOLDER + "/")})
    except ValueError as err:
        raise refuse(f"left a file it cannot read: {err}") from None
    if not tasks:
        raise refuse("left no readings: its image predates them (pml_trainer.readings); rebuild it")
    if missing := [task for task in expected if task not in {t.task for t in tasks}]:
        raise refuse(f"has no readings of {', '.join(missing)}: the task could not publish them (its log says why)")
    chief = next(t for t in tasks if t.task == "chief-0")
    if len(rows) < epochs or len(chief.marks) < epochs:
        raise refuse(f"has readings of {len(chief.marks)} of its {epochs} epochs")
    # The epochs after the first, each from its training's start to its end.
    windows = [(began, ended) for began, ended, _ in chief.marks[1:epochs]]
    done = chief.marks[epochs - 1][2] - chief.marks[0][2]
    spent: dict[str, list[tuple[float, float]]] = {}
    for t in tasks:
        ends = [(t.at(began), t.at(ended)) for began, ended in windows]
        if any(a is None or b is None for a, b in ends):
            raise refuse(
                f"has no readings of {t.task} around each measured epoch's start and end "
                f"(none, or none within {readings.MAX_GAP:g} s)"
            )
        spent[t.task] = [(b[0] - a[0], b[1] - a[1]) for a, b in ends]  # type: ignore[index]
    cpu = sum(c for each in spent.values() for c, _ in each) / done
    # Each namespace once: what one task's received, its neighbours' there received too.
    spaces = {t.space: t.task for t in tasks}
    moved = None
    if own not in spaces:
        moved = sum(b for task in spaces.values() for _, b in spent[task]) / done
    rates = [r["examples_per_sec"] for r in rows[1:epochs]]
    memory = {t.task: t.memory for t in tasks}
    return {
        "step": (workers if ps else 1) * batch / statistics.median(rates),
        "steps": done,
        "examples_per_sec": rates,
        "seconds": [r["seconds"] for r in rows[1:epochs]],
        "cpu": cpu,
        "bytes": moved,
        "memory": max((v for k, v in memory.items() if k.startswith("worker" if workers else "chief")), default=None),
        "ps_memory": max((v for k, v in memory.items() if k.startswith("ps")), default=None),
        "host": chief.host,
        "cpus": chief.cpus,
        "cpu_model": chief.cpu_model,
    }
