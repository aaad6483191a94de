"""The study's experiments as commands: parameter sweeps and baseline-against-cluster comparisons.

Every run is a real job on a target, through the target contract (deploy/target.py), so an
experiment runs on this machine, in Docker or on a cluster alike: the study's distributed
comparison ran on a cloud cluster. Each run is named after the experiment and labelled with it
(`pmlctl list` groups them), and its metrics are read from its model dir, a folder or gs:// or
s3://, once it has ended. A run that fails is a row that says so; the others go on.

A sweep changes one parameter at a time and holds the others fixed; a comparison runs the same
job as one process and as cluster shapes. Both report each figure as the mean over repeats, its
spread, and a percentage of the first row, the way the study's tables did, and write JSON, CSV and
a PNG plot.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from deploy.spec import DNS_1035, MAX_NAME, JobSpec
from deploy.target import CANCELLED, SUCCEEDED, JobStatus, Target
from pml_trainer import storage
from pml_trainer.errors import BadInput, first_problem
from pml_trainer.options import TrainOptions, param

# The score a table shows is the task's first metric (its own name: accuracy for the study's
# networks, mae for a regression); each run says which in its "metric".
DEFAULT_METRIC = "accuracy"
# What "cores" sets besides the CPU affinity: how many ops run at once. Threads per op follow the
# affinity by themselves, shared among the job's tasks (trainer/cpus.py).
CORES_FLAGS = ("inter_op_threads",)
PARAMS = "params."  # a sweep over a task parameter: params.KEY sets trainer.params[KEY], as --task-param KEY=V


@dataclass
class Row:
    """One line of a table: a parameter value (or a shape) and its runs."""

    label: str
    runs: list[dict] = field(default_factory=list)  # a run that failed holds only "failed" (why) and "model_dir"

    @property
    def failures(self) -> list[str]:
        return [r["failed"] for r in self.runs if "failed" in r]

    def mean(self, metric: str) -> float | None:
        values = [r[metric] for r in self.runs if r.get(metric) is not None]
        return statistics.fmean(values) if values else None

    def spread(self, metric: str) -> float:
        values = [r[metric] for r in self.runs if r.get(metric) is not None]
        return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Table:
    """Rows of one experiment; the first row is the baseline every percentage refers to."""

    title: str
    column: str
    rows: list[Row]

    @property
    def metric(self) -> str:
        return next((r["metric"] for row in self.rows for r in row.runs if r.get("metric")), DEFAULT_METRIC)

    @property
    def metrics(self) -> tuple[str, ...]:
        m = self.metric
        return ("loss", m, f"val_{m}", f"test_{m}", "seconds", "examples_per_sec")

    def percent(self, row: Row, metric: str) -> float | None:
        base, value = self.rows[0].mean(metric), row.mean(metric)
        if base in (None, 0) or value is None:
            return None
        return value / base * 100.0  # x / x is exactly 1, so the baseline is exactly 100

    def records(self) -> list[dict[str, Any]]:
        out = []
        for row in self.rows:
            record: dict[str, Any] = {
                "experiment": self.title,
                self.column: row.label,
                "runs": len(row.runs) - len(row.failures),
                "failed": row.failures,
            }
            for metric in self.metrics:
                record[metric] = row.mean(metric)
                record[f"{metric}_spread"] = row.spread(metric)
                record[f"{metric}_pct"] = self.percent(row, metric)
            base = self.rows[0].mean("seconds")
            record["speedup"] = base / row.mean("seconds") if base and row.mean("seconds") else None
            out.append(record)
        return out


# --- planning: every variant is checked before the first run starts -------------------------------


def parse_param(text: str) -> tuple[str, list[str]]:
    """`neurons=32,128` -> ("neurons", ["32", "128"]); `params.units=16,64` -> ("params.units", ["16", "64"]),
    a task parameter (--task-param), whose name is kept as written."""
    name, _, values = text.partition("=")
    name = name.strip()
    if not name.startswith(PARAMS):
        name = name.replace("-", "_")
    if not values or not name or name == PARAMS:
        raise BadInput(
            f"--param {text!r}: write it as NAME=V1,V2,... for example neurons=32,128,256 or params.units=16,64"
        )
    if name != "cores" and not name.startswith(PARAMS) and name not in TrainOptions.model_fields:
        raise BadInput(
            f"--param {text!r}: {name.replace('_', '-')} is not a trainer flag; use cores, params.KEY (a task "
            f"parameter) or one of {', '.join(n.replace('_', '-') for n in TrainOptions.model_fields)}"
        )
    return name, [v.strip() for v in values.split(",") if v.strip()]


def variant(base: JobSpec, name: str, value: str, target: type[Target]) -> tuple[JobSpec, list[int] | None]:
    """The job with one parameter changed, and the CPUs to pin it to (for `cores`)."""
    updates: dict[str, Any] = {}
    cpus = None
    if name == "cores":
        if not target.pins_cpus:
            raise BadInput(
                f"--param cores: -t {target.name} cannot pin a job to CPUs; sweep cores with -t local or "
                "-t docker, or sweep roles.<role>.resources.cpu in job files"
            )
        available = sorted(os.sched_getaffinity(0))
        if not value.isdigit() or not 1 <= int(value) <= len(available):
            raise BadInput(
                f"--param cores={value}: use a whole number from 1 to {len(available)} (this machine's CPUs)"
            )
        cpus = available[: int(value)]
        updates = {flag: int(value) for flag in CORES_FLAGS}
    elif name.startswith(PARAMS):
        try:
            key, given = param(f"{name.removeprefix(PARAMS)}={value}")
        except ValueError as err:
            raise BadInput(f"--param {name}={value}: {err}") from None
        updates = {"params": {**base.trainer.params, key: given}}
    else:
        updates = {name: value}
    try:
        trainer = TrainOptions(**{**base.trainer.model_dump(exclude_defaults=True), **updates})
    except ValidationError as err:
        raise BadInput(f"--param {name.replace('_', '-')}={value}: {first_problem(err).message}") from None
    return base.model_copy(update={"trainer": trainer}), cpus


def parse_shape(text: str) -> tuple[int, int]:
    """`6x3` -> (6 workers, 3 ps)."""
    workers, sep, ps = text.lower().partition("x")
    if not sep or not workers.isdigit() or not ps.isdigit():
        raise BadInput(f"--shape {text!r}: write it as WORKERSxPS, for example 2x1 or 6x3")
    if int(ps) and not int(workers):
        raise BadInput(f"--shape {text!r}: ps need at least one worker")
    return int(workers), int(ps)


# --- running ------------------------------------------------------------------------------------


def work(spec: JobSpec) -> float:
    """A run's size for the time-left estimate: the examples it trains on. A sweep over epochs
    (1, 2, 4, 8) has runs of very different lengths; counting runs made the estimate half the
    real time."""
    return spec.trainer.epochs * (spec.trainer.train_examples or 60_000)


def model_root(base: JobSpec, target: type[Target]) -> str:
    """Where the runs' model dirs go: one folder per run under the job's model dir (by default
    runs/<experiment>, beside the tables). A target whose tasks do not see this machine's files
    needs gs:// or s3://, where the runs write their metrics and pmlctl reads them."""
    if not target.sees_local_files and not storage.is_remote(base.model_dir):
        raise BadInput(
            f"--model-dir {base.model_dir}: the runs on -t {target.name} cannot write to this machine; "
            "give --model-dir gs://BUCKET/PATH or s3://BUCKET/PATH, where pmlctl reads their metrics"
        )
    return base.model_dir if storage.is_remote(base.model_dir) else storage.absolute(base.model_dir)


class Interrupted(Exception):
    """A run was cancelled (Ctrl-C): the experiment stops there."""


class Runner:
    """Runs jobs one after another on a target, and says which of how many and the time left."""

    def __init__(self, target: Target, options: dict[str, Any], planned: list[JobSpec], root: str):
        self.target, self.options, self.root = target, options, root
        self.total, self.done = len(planned), 0
        self.left_work, self.done_work = sum(map(work, planned)), 0.0
        self.started = time.monotonic()

    def run(self, spec: JobSpec, what: str, cpus: list[int] | None = None) -> dict:
        """One run's measures, or why it failed."""
        self.done += 1
        left = ""
        if self.done_work:
            per_work = (time.monotonic() - self.started) / self.done_work
            left = f", about {_duration(per_work * self.left_work)} left"
        print(f"[{self.done}/{self.total}] {what}{left}", file=sys.stderr, flush=True)
        self.left_work -= work(spec)
        self.done_work += work(spec)
        model_dir = f"{self.root.rstrip('/')}/{spec.name}"
        spec = spec.model_copy(update={"trainer": spec.trainer.model_copy(update={"model_dir": model_dir})})
        handle = self.target.submit(self.target.plan(spec, self.options, cpus))
        outcome = self.target.wait(handle, None)
        if outcome.phase == CANCELLED:
            raise Interrupted(outcome.message)
        if outcome.phase != SUCCEEDED:
            print(f"    failed: {outcome.message}", file=sys.stderr, flush=True)
            return {"failed": outcome.message, "model_dir": model_dir}
        record = measured(model_dir, endpoint(spec), self.target.status(handle))
        print(
            f"    loss {record['loss']:.4f}  {record['metric']} {record[record['metric']]:.4f}  "
            f"{record['seconds']:.1f}s  {record['examples_per_sec']:.0f} examples/s",
            file=sys.stderr,
            flush=True,
        )
        return record


def endpoint(spec: JobSpec) -> str | None:
    return spec.trainer.s3_endpoint or spec.env.get("AWS_ENDPOINT_URL")


def measured(model_dir: str, s3_endpoint: str | None, status: JobStatus) -> dict:
    """What one finished run measured, from its model dir: its last epoch, its test result and its CPUs."""
    store = storage.open_store(model_dir, s3_endpoint)

    def read(name: str) -> str:
        data = store.get_bytes(name)
        if data is None:
            raise BadInput(f"{model_dir}: the run succeeded but left no {name}; was --model-dir changed in its job?")
        return data.decode()

    epochs = [json.loads(line) for line in read("metrics.jsonl").splitlines() if line.strip()]
    result = json.loads(read("result.json"))
    last = epochs[-1]
    chief = next(t for t in status.tasks if t.role == "chief")
    # The task's metrics follow "loss" in each row (pml_trainer.task: loss, then each metric by name).
    names = [k for k in last if k not in ("epoch", "step", "loss", "seconds", "examples_per_sec")]
    metric = next((k for k in names if not k.startswith("val_")), "loss")
    return {
        "metric": metric,
        "loss": last["loss"],
        metric: last[metric],
        f"val_{metric}": last.get(f"val_{metric}"),
        f"test_{metric}": result.get(f"test_{metric}"),
        "seconds": result["train_seconds"],
        "examples_per_sec": result["steps"] * result["global_batch"] / result["train_seconds"],
        "epochs": len(epochs),
        "cpus": chief.cpus,
        "model_dir": model_dir,
    }


def sweep(base: JobSpec, params: list[str], repeats: int, target: Target, options: dict[str, Any]) -> list[Table]:
    plans = []  # per parameter: its flag, and per value the value, its runs and their CPUs
    for text in params:
        name, values = parse_param(text)
        flag = name if name.startswith(PARAMS) else name.replace("_", "-")
        label = re.sub(r"[^a-z0-9-]+", "-", flag.lower()).strip("-")  # in the runs' names: a DNS label
        variants = []
        for i, value in enumerate(values):
            spec, cpus = variant(base, name, value, type(target))
            variants.append((value, [_named(spec, f"{base.name}-{label}-{i}-{r}", r) for r in range(repeats)], cpus))
        plans.append((flag, variants))
    planned = [spec for _, variants in plans for _, specs, _ in variants for spec in specs]
    runner = Runner(target, options, planned, model_root(base, type(target)))
    tables = []
    for flag, variants in plans:
        rows = []
        for value, specs, cpus in variants:
            rows.append(
                Row(
                    value,
                    [
                        runner.run(spec, f"{flag}={value}, repeat {r + 1}/{repeats}", cpus)
                        for r, spec in enumerate(specs)
                    ],
                )
            )
        tables.append(Table(flag, flag, rows))
    return tables


def compare(base: JobSpec, shapes: list[str], repeats: int, target: Target, options: dict[str, Any]) -> Table:
    """The job as one process (the baseline) and as each cluster shape."""
    plans = []  # per shape: its label and its runs
    for i, (workers, ps) in enumerate([(0, 0)] + [s for s in map(parse_shape, shapes) if s != (0, 0)]):
        label = (
            "1 process"
            if (workers, ps) == (0, 0)
            else f"1 chief, {workers} worker{'s' if workers != 1 else ''}, {ps} ps"
        )
        spec = base.model_copy(update={"replicas": base.replicas.model_copy(update={"workers": workers, "ps": ps})})
        plans.append((label, [_named(spec, f"{base.name}-{i}-{r}", r) for r in range(repeats)]))
    runner = Runner(target, options, [spec for _, specs in plans for spec in specs], model_root(base, type(target)))
    return Table(
        "compare",
        "shape",
        [
            Row(label, [runner.run(spec, f"{label}, repeat {r + 1}/{repeats}") for r, spec in enumerate(specs)])
            for label, specs in plans
        ],
    )


def _named(spec: JobSpec, name: str, repeat: int) -> JobSpec:
    """One run's job: its own name, under the experiment's, and its own seed for each repeat, so
    repeats measure spread. The name is checked here, before the first run starts."""
    if not DNS_1035.match(name) or len(name) > MAX_NAME:
        raise BadInput(
            f"--name {spec.name}: its runs' names, such as {name}, must be at most {MAX_NAME} characters; "
            f"give a shorter --name"
        )
    trainer = spec.trainer.model_copy(update={"seed": spec.trainer.seed + repeat})
    return spec.model_copy(update={"name": name, "experiment": spec.name, "trainer": trainer})


# --- reporting ----------------------------------------------------------------------------------


def render(table: Table) -> str:
    """The study's layout: each figure beside its percentage of the first row."""
    m = table.metric
    short = m.replace("accuracy", "acc")
    head = (
        f"{table.column:<26} {'loss':>8} {'%':>6} {short:>7} {'%':>6} {'val_' + short:>8} "
        f"{'time (s)':>13} {'%':>6} {'ex/s':>8} {'speed-up':>8}"
    )
    lines = [head]
    for record in table.records():
        if not record["runs"]:
            lines.append(f"{record[table.column]!s:<26} failed: {record['failed'][0]}")
            continue

        def pct(metric, record=record):
            value = record[f"{metric}_pct"]
            return f"{value:>6.1f}" if value is not None else f"{'-':>6}"

        spread = f"±{record['seconds_spread']:.1f}" if record["runs"] > 1 else ""
        val = record[f"val_{m}"]
        lines.append(
            f"{record[table.column]!s:<26} {record['loss']:>8.4f} {pct('loss')} {record[m]:>7.4f} "
            f"{pct(m)} {(f'{val:.4f}' if val is not None else '-'):>8} "
            f"{record['seconds']:>8.1f}{spread:>5} {pct('seconds')} {record['examples_per_sec']:>8.0f} "
            f"{record['speedup']:>7.2f}x"
        )
    return "\n".join(lines)


def write(tables: list[Table], out_dir: pathlib.Path, stem: str) -> list[pathlib.Path]:
    """<stem>.json (every run), <stem>.csv (one row per value) and <stem>.png."""
    from deploy import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "tables": [
            {"title": t.title, "column": t.column, "rows": t.records(), "runs": {row.label: row.runs for row in t.rows}}
            for t in tables
        ]
    }
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.csv", out_dir / f"{stem}.png"]
    paths[0].write_text(json.dumps(doc, indent=2) + "\n")
    with open(paths[1], "w", newline="") as f:
        records = [{"value" if k == t.column else k: v for k, v in r.items()} for t in tables for r in t.records()]
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    plots.save(tables, paths[2])
    return paths


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
