"""`pmlctl plan`: every cluster shape of a job, predicted from a calibration and a machine table,
and the one to run under a goal.

A calibration (deploy/calibrate.py measures one; a file can give one) says what one step of this
job costs: the compute of a step in one process and on a worker, the bytes a worker's step moves
to and from the ps, the parameter bytes, the all-reduce's fixed cost, and, where it was measured,
the CPU time a step takes and the memory a task holds. The cost model (deploy/costmodel.py) turns
that and the machines' links into examples/s per shape; the price is every machine of the shape
(chief, workers, ps) for the training time. Pure Python: it never runs anything.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from deploy.costmodel import PAYLOAD, Model, Parts, allreduce_seconds, chain_share, ring_bytes, round_robin_share
from deploy.machines import Machine, Table
from pml_trainer.errors import BadInput

GOALS = ("fastest", "cheapest")
# Two VMs in one zone; 1 ms moves the study's prediction by 1% (bench/RESULTS.md). --rtt overrides it.
DEFAULT_RTT = 0.0002
REQUIRED = ("batch", "examples_per_epoch", "parameter_bytes", "local_step", "worker_compute", "bytes_in", "bytes_out")
VARIABLES = "{source}: variable_bytes must list each variable's bytes, every one above 0"
OPTIONAL_NUMBERS = ("allreduce_overhead", "local_cpu", "step_cpu", "ps_cpu", "ps_step", "allreduce_cpu", "probe_load")


def _number(value: Any) -> bool:
    """A finite number: NaN passes every `< 0` check, and would price a shape at $nan."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Calibration:
    """What one step of this job costs, and where that was measured."""

    where: str
    batch: int
    examples_per_epoch: int
    parameter_bytes: int
    local_step: float  # seconds: one process's step at `batch`
    worker_compute: float  # seconds: a ps worker's step, its transfers and round trip left out
    bytes_in: float  # per worker step, from the ps
    bytes_out: float
    variable_bytes: tuple[int, ...] = ()  # each trainable variable, in creation order (the ps take them in turn)
    allreduce_overhead: float = 0.0  # seconds per mirrored step beyond its bytes and round trips
    local_cpu: float | None = None  # CPU seconds one process spends per step
    step_cpu: float | None = None  # CPU seconds a ps job's tasks spend together per worker step
    ps_cpu: float | None = None  # CPU seconds per worker step that each ps past the first adds
    ps_step: float | None = None  # seconds each ps past the first adds to a worker's step, all on one machine
    allreduce_cpu: float | None = None  # CPU seconds per mirrored step that each replica's all-reduce adds
    probe_load: float | None = None  # the share of its machine's cores the 1 worker + 1 ps probe kept busy
    memory: dict[str, float] = field(default_factory=dict)  # bytes a task of each role held (local, worker, ps)
    measured: dict[str, Any] = field(default_factory=dict)  # the probe's raw figures, for the record

    @classmethod
    def from_json(cls, doc: Any, source: str) -> Calibration:
        if not isinstance(doc, dict):
            raise BadInput(f"{source}: a calibration is a mapping with {', '.join(REQUIRED)}")
        missing = [k for k in REQUIRED if k not in doc]
        if missing:
            raise BadInput(f"{source}: {missing[0]} is missing; a calibration needs {', '.join(REQUIRED)}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - known)
        if unknown:
            raise BadInput(f"{source}: unknown field {unknown[0]}; a calibration has {', '.join(sorted(known))}")
        listed = doc.get("variable_bytes") or []
        # Whole bytes: a figure below 1 would be a variable of none.
        if not isinstance(listed, list) or not all(_number(v) and v >= 1 for v in listed):
            raise BadInput(VARIABLES.format(source=source))
        try:
            found = cls(**{**doc, "variable_bytes": tuple(int(v) for v in listed)})
            numbers = [getattr(found, name) for name in REQUIRED]
            if any(not _number(n) or n <= 0 for n in numbers):
                raise ValueError
        except (TypeError, ValueError):
            raise BadInput(f"{source}: {', '.join(REQUIRED[:-1])} and {REQUIRED[-1]} must be numbers above 0") from None
        for name in OPTIONAL_NUMBERS:
            value = getattr(found, name)
            if value is not None and (not _number(value) or value < 0):
                raise BadInput(f"{source}: {name} must be a number, 0 or more (or left out)")
        if not isinstance(found.batch, int) or isinstance(found.batch, bool):
            raise BadInput(f"{source}: batch {found.batch} must be a whole number of examples")
        if not isinstance(found.memory, dict) or any(not _number(v) or v < 0 for v in found.memory.values()):
            raise BadInput(f"{source}: memory must map roles (local, worker, ps) to the bytes a task held")
        if not isinstance(found.measured, dict):
            raise BadInput(f"{source}: measured must map each probe to its figures (or be left out)")
        return found

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["variable_bytes"] = list(self.variable_bytes)
        return doc

    def load_of_probe(self, cores: int) -> float:
        """probe_load, or where a calibration predates it, what its 1 worker + 1 ps probe's record
        says (its CPU per step over `cores` times its step); else 0: the compute taken as the work."""
        if self.probe_load is not None:
            return self.probe_load
        probe = self.measured.get("ps_job")
        probe = probe if isinstance(probe, dict) else {}
        cpu, step, cpus = probe.get("cpu"), probe.get("step"), probe.get("cpus")
        if _number(cpu) and _number(step) and step > 0:
            return min(cpu / (cpus if _number(cpus) and cpus > 0 else cores) / step, 1.0)
        return 0.0


@dataclass(frozen=True)
class Shape:
    """One shape on one machine type: its prediction, or why it cannot run."""

    workers: int
    ps: int
    machine: str
    examples_per_sec: float | None = None
    seconds: float | None = None
    price_usd: float | None = None
    parts: Parts | None = None  # one step of a worker (of the whole step, for one process and mirrored)
    problem: str | None = None
    ps_machine: str | None = None  # the ps's machine type, where not the workers'
    chief_machine: str | None = None

    @property
    def label(self) -> str:
        if self.workers == 0:
            return "1 process"
        return f"{self.workers}x{self.ps}" if self.ps else f"{self.workers} mirrored"

    def contract(self) -> dict[str, Any]:
        """The JSON contract's fields (issue 27): nothing else."""
        return {
            "workers": self.workers,
            "ps": self.ps,
            "machine": self.machine,
            "examples_per_sec": _round(self.examples_per_sec),
            "seconds": _round(self.seconds),
            "price_usd": _round(self.price_usd, 4),
        }


@dataclass(frozen=True)
class Roles:
    """The machines of each role; None takes the workers'."""

    workers: Machine
    ps: Machine | None = None
    chief: Machine | None = None


@dataclass
class Result:
    calibration: Calibration
    shapes: list[Shape]  # those that can run, as the goal ranks them
    refused: list[Shape]  # those that cannot, with why
    recommended: Shape
    why: str
    met: bool  # whether the recommended shape meets --deadline or --budget (no constraint: True)
    epochs: int
    goal: str
    table: Table

    def to_json(self) -> dict[str, Any]:
        return {
            "calibration": self.calibration.to_json(),
            "shapes": [s.contract() for s in self.shapes],
            "recommended": self.recommended.contract(),
            "why": self.why,
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --- input ----------------------------------------------------------------------------------------


def span(text: str, what: str, lowest: int, highest: int) -> list[int]:
    """`1..16`, `4` or `1,2,4` as the numbers it names."""
    numbers: list[int] = []
    for part in text.split(","):
        low, dots, high = part.strip().partition("..")
        try:
            ends = (int(low), int(high) if dots else int(low))
        except ValueError:
            raise BadInput(
                f"--{what} {text}: write a range such as {lowest}..{min(highest, 4)}, or numbers such as 1,2,4"
            ) from None
        # The bounds before the range: 0..100000000000 would fill the memory first.
        if min(ends) < lowest or max(ends) > highest:
            raise BadInput(f"--{what} {text}: use numbers from {lowest} to {highest}, e.g. {lowest}..{min(highest, 4)}")
        if ends[0] > ends[1]:
            raise BadInput(
                f"--{what} {text}: {part.strip()} runs backwards; write it low to high, {ends[1]}..{ends[0]}"
            )
        numbers += range(ends[0], ends[1] + 1)
    return sorted(set(numbers))


DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def duration(text: str) -> float:
    """`2h`, `90m`, `1h30m`, `3600s` or `3600` in seconds."""
    found = DURATION.match(text.strip().lower())
    if not text.strip() or not found or not any(found.groups()):
        raise BadInput(f"--deadline {text}: write a time such as 2h, 90m, 1h30m or 3600s")
    days, hours, minutes, seconds = (float(g or 0) for g in found.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise BadInput(f"--deadline {text}: give a time above 0, such as 2h")
    return total


def money(text: str) -> float:
    """`20usd`, `$20`, `20 USD` or `20` in US dollars."""
    cleaned = text.strip().lower().removeprefix("$").removesuffix("usd").strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise BadInput(f"--budget {text}: write an amount in US dollars such as 20usd or 7.50") from None
    if not 0 < value < math.inf:
        raise BadInput(f"--budget {text}: give an amount above 0, such as 20usd")
    return value


# --- prediction -----------------------------------------------------------------------------------


def predict(
    cal: Calibration,
    roles: Roles,
    workers: int,
    ps: int,
    epochs: int,
    rtt: float = DEFAULT_RTT,
    spot: bool = False,
) -> Shape:
    """One shape's examples/s, training time and price, or why it cannot run."""
    w, p, c = roles.workers, roles.ps or roles.workers, roles.chief or roles.workers
    refused = _refusal(cal, w, p, c, workers, ps)
    if refused:
        return Shape(workers, ps, w.name, problem=refused)
    # Finite figures can still overflow (1e308 bytes a step, a speed of 1e-320): no answer, not $inf.
    try:
        shape = _predicted(cal, roles, workers, ps, epochs, rtt, spot)
        figures = (shape.examples_per_sec, shape.seconds, shape.price_usd)
        if all(math.isfinite(v) for v in figures) and shape.examples_per_sec > 0:  # type: ignore[arg-type,operator]
            return shape
    except (ZeroDivisionError, OverflowError):
        pass
    return Shape(workers, ps, w.name, problem="its figures overflow: check the calibration's and the machines'")


def _predicted(cal: Calibration, roles: Roles, workers: int, ps: int, epochs: int, rtt: float, spot: bool) -> Shape:
    w, p, c = roles.workers, roles.ps or roles.workers, roles.chief or roles.workers
    batch = cal.batch
    shared = w.shared_cores
    if workers == 0:
        compute = cal.local_step / w.speed
        parts = Parts(compute, 0.0, 0.0)
        rate = batch / compute
        others = [w]  # the one process runs on the worker's machine type
    elif ps == 0:
        replicas = workers + 1  # the chief trains as a replica too (MultiWorkerMirroredStrategy)
        compute = cal.local_step * (batch // replicas) / batch / min(w.speed, c.speed)
        if shared and cal.local_cpu:  # every replica's share of the CPU a global step needs
            compute = max(compute, cal.local_cpu / shared)
        moved = allreduce_seconds(replicas, cal.parameter_bytes, min(w.rate, c.rate) * PAYLOAD, rtt, 0.0)
        parts = Parts(compute, moved, cal.allreduce_overhead)
        if shared and cal.local_cpu:
            # On shared cores the all-reduce's fixed cost is CPU that each replica spends, and the
            # bytes every replica sends cost CPU too: the step is no shorter than that CPU on them.
            sent = replicas * ring_bytes(replicas, cal.parameter_bytes)
            cpu = cal.local_cpu + replicas * (cal.allreduce_cpu or 0.0) + sent * w.link_cpu_per_gb / 1e9
            if cpu / shared > parts.total:
                parts = Parts(cpu / shared - parts.transfer, parts.transfer, 0.0)
        rate = batch / parts.total
        others = [c]
    else:
        compute = cal.worker_compute / w.speed
        if shared:  # the probe's 1 worker + 2 ps, on one machine too, measured what a ps adds to a step
            compute += (ps - 1) * (cal.ps_step or 0.0)
        share = round_robin_share(list(cal.variable_bytes), ps) if cal.variable_bytes else 1.0 / ps
        model = Model(workers, compute, cal.bytes_in, cal.bytes_out, rtt, share, chain_share(cal.variable_bytes))
        if shared and cal.step_cpu:
            # The workers' steps, the servers' work and the bytes between hosts on the same cores.
            moved = (cal.bytes_in + cal.bytes_out) * w.link_cpu_per_gb / 1e9
            cpu = cal.step_cpu + (ps - 1) * (cal.ps_cpu or 0.0) + moved
            model = _sharing(model, batch, cpu / shared, cal.load_of_probe(shared), p.rate * PAYLOAD, w.rate * PAYLOAD)
        parts = model.parts(p.rate * PAYLOAD, w.rate * PAYLOAD)
        rate = model.examples_per_sec(batch, p.rate * PAYLOAD, w.rate * PAYLOAD)
        others = [p] * ps + [c]
    seconds = max(cal.examples_per_epoch // batch, 1) * epochs * batch / rate
    # The chief and the ps stay on standard VMs; only workers go to Spot (deploy/gke/main.tf).
    hourly = w.usd_per_hour if shared else workers * _hourly(w, spot) + sum(m.usd_per_hour for m in others)
    # Per second after the first minute (the pricing page's billing model).
    price = hourly * max(seconds, 60.0) / 3600
    # One process is the chief, on the workers' machine type: no other chief is pinned.
    chief = roles.chief and workers and c.name
    return Shape(workers, ps, w.name, rate, seconds, price, parts, None, roles.ps and p.name, chief or None)


def _sharing(
    model: Model, batch: int, core_seconds: float, probe_load: float, rate: float, worker_rate: float
) -> Model:
    """The model whose workers compute on cores every task shares. A slowdown shaped like processor
    sharing (Kleinrock, Queueing Systems II, M/G/1-PS: a job needing x of the server takes
    x / (1 - load)) and pinned at the probe's load: the probe's compute was stretched so at the load
    it measured, and the work is what is left of it. The load is the steps a second times the cores'
    seconds a step takes, found where the workers' rate and the load it makes agree (bisection: at a
    load of 0 the workers outrun it, near 1 their compute never ends). Where it departs from the
    queue: a closed loop of W workers, not Poisson arrivals; two cores, a task's thread on one at a
    time; the servers' CPU mostly while the worker waits; the worker's own CPU in the load, though
    it never waits for itself (the pinning corrects that at the probe's load only); the transfers,
    whose CPU is in the load, not stretched."""
    work = model.compute * (1 - min(probe_load, 0.95))

    def at(load: float) -> Model:
        return replace(model, compute=work / (1 - load))

    low, high = 0.0, 1.0 / core_seconds  # steps a second: at most what the cores pass
    for _ in range(60):
        steps = (low + high) / 2
        if at(steps * core_seconds).examples_per_sec(batch, rate, worker_rate) / batch > steps:
            low = steps
        else:
            high = steps
    return at(low * core_seconds)


def _hourly(machine: Machine, spot: bool) -> float:
    if spot and machine.spot_usd_per_hour is not None:
        return machine.spot_usd_per_hour
    return machine.usd_per_hour


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB"


def _refusal(cal: Calibration, w: Machine, p: Machine, c: Machine, workers: int, ps: int) -> str | None:
    """Why the shape cannot run on these machines, in one sentence, or None."""
    if ps and not workers:
        return "ps need at least one worker"
    variables = len(cal.variable_bytes)
    if ps and variables and ps > variables:
        return f"{ps} ps for {variables} variables: {ps - variables} ps would hold none (the ps take whole variables in turn)"
    replicas = workers + 1
    if workers and not ps and cal.batch % replicas:
        return (
            f"batch {cal.batch} does not split over the replicas (the chief and each worker); "
            "give a batch size the replicas divide"
        )
    offline = [m for m in (w, c, p if ps else None) if workers and m is not None and m.egress_gbps <= 0]
    if offline:
        return f"{offline[0].name} has no network: it can run one process only"
    # One process runs on the workers' machine type (its row is named for it); a mirrored job's
    # chief trains a replica of its own, as a worker does.
    needs = [
        ("local", w if workers == 0 else None),
        ("worker", w if workers else None),
        ("worker", c if workers and not ps else None),
        ("ps", p if ps else None),
    ]
    for role, machine in needs:
        if machine is None or role not in cal.memory or machine.shared_cores:
            continue
        if cal.memory[role] > machine.memory_gb * 1e9:
            held = "one process" if role == "local" else f"a {role}"
            return f"{machine.name} has {machine.memory_gb:g} GB; {held} of this job held {_gb(cal.memory[role])} in the calibration"
    return None


# --- the choice -----------------------------------------------------------------------------------


def plan(
    cal: Calibration,
    table: Table,
    machines: list[Roles],
    workers: list[int],
    ps: list[int],
    epochs: int,
    goal: str | None = None,
    deadline: float | None = None,
    budget: float | None = None,
    rtt: float = DEFAULT_RTT,
    spot: bool = False,
) -> Result:
    check_goal(goal, deadline, budget)
    every = [
        predict(cal, roles, w, p, epochs, rtt, spot)
        for roles in machines
        for w in workers
        for p in ps
        if not (w == 0 and p)  # one process has no ps: not a shape, not a refusal
    ]
    shapes = [s for s in every if s.problem is None]
    refused = [s for s in every if s.problem is not None]
    if not shapes:
        reason = refused[0].problem if refused else "no shape in the ranges"
        raise BadInput(f"no shape can run: {reason}; widen --workers and --ps, or pick another --machine")
    recommended, why = choose(shapes, goal, deadline, budget)
    met = (deadline is None or recommended.seconds <= deadline) and (budget is None or recommended.price_usd <= budget)  # type: ignore[operator]
    # The table lists the shapes as the goal ranks them: by price where the cheapest wins.
    shapes.sort(key=_by_price if goal == "cheapest" or deadline is not None else _by_time)
    return Result(cal, shapes, refused, recommended, why, met, epochs, _goal_name(goal, deadline, budget), table)


def check_goal(goal: str | None, deadline: float | None, budget: float | None) -> None:
    """One goal: `goal` None is the default (fastest), which a deadline or a budget replaces."""
    if goal is not None and goal not in GOALS:
        raise BadInput(f"--goal {goal}: use fastest or cheapest (or --deadline, --budget)")
    if deadline is not None and budget is not None:
        raise BadInput(
            "--deadline and --budget: give one; --deadline picks the cheapest in time, --budget the fastest within it"
        )
    if goal is not None and (deadline is not None or budget is not None):
        raise BadInput(
            f"--goal {goal} and {'--deadline' if deadline is not None else '--budget'}: give one; "
            "--deadline picks the cheapest in time, --budget the fastest within it"
        )


def _goal_name(goal: str | None, deadline: float | None, budget: float | None) -> str:
    if deadline is not None:
        return f"the cheapest within {readable_time(deadline)}"
    if budget is not None:
        return f"the fastest within ${budget:g}"
    return goal or "fastest"


def usd(amount: float) -> str:
    """A price to the cent, or to two significant figures below a dime: a short job's $0.0042
    would read as $0.00, a price of nothing."""
    places = 2 if amount >= 0.1 or amount <= 0 else min(1 - math.floor(math.log10(amount)), 6)
    return f"${amount:.{places}f}"


def readable_time(seconds: float, minute_places: int = 0) -> str:
    """A plan's time in the unit that reads best: the table gives minutes to `minute_places`."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.{minute_places}f}m"
    return f"{seconds / 3600:.1f}h"


# Shapes predicted within this of the fastest are taken as fast: the model errs by up to 14% where
# the network sets the pace on the test hosts (bench/RESULTS.md), so a 1% lead is no reason to pay
# for another ps.
LEVEL = 0.02


def _fastest(shapes: list[Shape]) -> Shape:
    best = min(s.seconds for s in shapes)  # type: ignore[type-var]
    return _cheapest([s for s in shapes if s.seconds <= best * (1 + LEVEL)])  # type: ignore[operator]


def _by_price(shape: Shape) -> tuple[float, float]:
    return shape.price_usd, shape.seconds  # type: ignore[return-value]


def _by_time(shape: Shape) -> tuple[float, float]:
    return shape.seconds, shape.price_usd  # type: ignore[return-value]


def _cheapest(shapes: list[Shape]) -> Shape:
    return min(shapes, key=_by_price)


def choose(shapes: list[Shape], goal: str | None, deadline: float | None, budget: float | None) -> tuple[Shape, str]:
    """The shape to run and one sentence why."""
    fastest = _fastest(shapes)
    single = [s for s in shapes if s.workers == 0]
    clusters = [s for s in shapes if s.workers]
    alone = ""
    if single and clusters and _fastest(single).seconds <= _fastest(clusters).seconds:  # type: ignore[operator]
        best, rival = _fastest(single), _fastest(clusters)
        alone = (
            f"one process beats every cluster: the fastest, {rival.label} on {rival.machine}, would reach "
            f"{rival.examples_per_sec / best.examples_per_sec:.0%} of its examples/s"  # type: ignore[operator]
        )
    if deadline is not None:
        within = [s for s in shapes if s.seconds <= deadline]  # type: ignore[operator]
        if not within:
            return fastest, _sentence(
                f"no shape trains within {readable_time(deadline)}; the fastest, {fastest.label} on {fastest.machine}, "
                f"takes {readable_time(fastest.seconds)}",  # type: ignore[arg-type]
                alone,
            )
        pick = _cheapest(within)
        return pick, _sentence(
            f"the cheapest shape that trains within {readable_time(deadline)}: {readable_time(pick.seconds)} for {usd(pick.price_usd)}",  # type: ignore[arg-type]
            alone,
        )
    if budget is not None:
        within = [s for s in shapes if s.price_usd <= budget]  # type: ignore[operator]
        if not within:
            cheapest = _cheapest(shapes)
            return cheapest, _sentence(
                f"no shape trains for ${budget:g}; the cheapest, {cheapest.label} on {cheapest.machine}, costs "
                f"{usd(cheapest.price_usd)}",
                alone,
            )
        pick = _fastest(within)
        return pick, _sentence(
            f"the fastest shape within ${budget:g}: {readable_time(pick.seconds)} for {usd(pick.price_usd)}",  # type: ignore[arg-type]
            alone,
        )
    if goal == "cheapest":
        pick = _cheapest(shapes)
        return pick, _sentence(
            f"the cheapest shape: {usd(pick.price_usd)} for {readable_time(pick.seconds)}",  # type: ignore[arg-type]
            alone,
        )
    pick = fastest
    return pick, _sentence(
        f"the fastest shape: {pick.examples_per_sec:.0f} examples/s, {readable_time(pick.seconds)} for {usd(pick.price_usd)}",  # type: ignore[arg-type]
        alone,
    )


def _sentence(main: str, alone: str) -> str:
    text = f"{main}; {alone}" if alone else main
    return text[0].upper() + text[1:] + "."


# --- the job file ---------------------------------------------------------------------------------

INSTANCE_TYPE = "node.kubernetes.io/instance-type"  # the well-known label the kubelet sets from the cloud


def job_document(spec_doc: dict[str, Any], shape: Shape, table: Table) -> dict[str, Any]:
    """The job file of `spec_doc` (a JobSpec dumped as JSON) with the recommended shape, each role
    pinned to the machine type it was planned on, on a cluster that has it: the workers to theirs,
    the ps and the chief to theirs (one process is the chief, on the workers' type)."""
    doc = dict(spec_doc)
    doc["replicas"] = {**doc.get("replicas", {}), "workers": shape.workers, "ps": shape.ps}
    placed = {"chief": shape.chief_machine or shape.machine}
    if shape.workers:
        placed["worker"] = shape.machine
    if shape.ps:
        placed["ps"] = shape.ps_machine or shape.machine
    roles = doc.setdefault("roles", {})
    for role, name in placed.items():
        machine = table.machines.get(name)
        # A test host's or the study's machine names no node type a cluster has.
        if machine is None or machine.shared_cores or machine.study is not None:
            continue
        section = roles.setdefault(role, {})
        section["node_selector"] = {**section.get("node_selector", {}), INSTANCE_TYPE: name}
    if not roles:
        del doc["roles"]
    return doc
