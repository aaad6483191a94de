"""The one view of `pmlctl`: what targets return (deploy/target.py), as tables, JSON and lines.

Every target's status, list, outcome and events are rendered here the same way, so that a job
reads alike on this machine, in Docker and on a cluster, and a new target prints nothing itself.
Results go to stdout; notes, progress and errors to stderr, errors as one `error:` line.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Iterable

import typer

from deploy.spec import ROLES
from deploy.target import (
    CANCELLED,
    FAILED,
    FINISHED,
    RUNNING,
    SUCCEEDED,
    Event,
    Handle,
    JobList,
    JobStatus,
    Note,
    Outcome,
    Plan,
)

TASKS = f"{'TASK':<12} {'WHERE':<32} {'PHASE':<10} {'RESTARTS':>8} {'EXIT':>5}  DETAIL"
JOBS = f"{'NAME':<24} {'KIND':<8} {'PHASE':<11} {'AGE':<5} DETAIL"


def age(stamp: str, now: datetime.datetime) -> str:
    """kubectl's way: 45s, 12m, 3h, 2d."""
    if not stamp:
        return "?"
    seconds = int((now - datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def event(e: Event, phases: bool = True) -> None:
    """A note, or (unless `phases` is off: the job's own output says it) a job's new phase."""
    if isinstance(e, Note):
        typer.echo(f"note: {e.text}", err=True)
    elif phases:
        typer.echo(f"job {e.name}: {e.phase}", err=True)


def plan(p: Plan) -> None:
    text = p.describe()
    typer.echo(text, nl=not text.endswith("\n"))


def submitted(handle: Handle) -> None:
    typer.echo(
        f"job {handle.name} submitted {handle.place}; follow it with `pmlctl status {handle.name} -t {handle.target}`"
    )


def status(s: JobStatus, output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(s.to_json(), indent=2))
        return
    where = ", ".join(filter(None, [s.kind, s.where, s.model_dir and f"model dir {s.model_dir}"]))
    typer.echo(f"job {s.name}: {s.phase} ({where}), age {age(s.created, _now())}")
    for note in s.notes:
        typer.echo(f"  {note}")
    typer.echo(TASKS)
    for t in sorted(s.tasks, key=lambda t: (ROLES.index(t.role) if t.role in ROLES else len(ROLES), t.index)):
        exit_code = "" if t.exit_code is None else t.exit_code
        detail = ": ".join(filter(None, [t.reason, t.message])) or (
            f"pid {t.pid}" if t.phase == RUNNING and t.pid else f"ended {t.ended}" if t.ended else ""
        )
        typer.echo(
            f"{t.label:<12} {t.where or '-':<32} {t.phase:<10} {t.restarts:>8} {exit_code:>5}  {detail}".rstrip()
        )
    if s.problem:
        typer.echo(f"error: {s.problem}", err=True)


def job_lists(lists: list[JobList], output: str, runs: bool) -> None:
    """The jobs of one or more targets; the runs of an experiment as one row under its name,
    unless `runs` asks for each."""
    found = sorted((job for listed in lists for job in listed.jobs), key=lambda j: j.name)
    if output == "json":
        typer.echo(json.dumps([job.to_json() for job in found], indent=2))
        return
    if not found:
        places = " or ".join(dict.fromkeys(listed.place for listed in lists))
        where = f" -t {lists[0].target}" if len(lists) == 1 else ""
        typer.echo(f"no jobs {places}: submit one with `pmlctl submit{where}`")
        return
    now = _now()
    typer.echo(JOBS)
    grouped: dict[str, list[JobStatus]] = {}
    for job in found:
        if job.experiment and not runs:
            grouped.setdefault(job.experiment, []).append(job)
        else:
            detail = f"run of {job.experiment}" if job.experiment else ""
            typer.echo(_row(job.name, job.kind, job.phase, age(job.created, now), detail))
    for experiment, members in grouped.items():
        counts = ", ".join(f"{sum(m.phase == p for m in members)} {p}" for p in dict.fromkeys(m.phase for m in members))
        oldest = min((m.created for m in members if m.created), default="")
        typer.echo(
            _row(
                experiment,
                members[0].kind,
                _overall(members),
                age(oldest, now),
                f"experiment: {len(members)} runs ({counts}); `pmlctl list --runs` shows them",
            )
        )


def _row(name: str, kind: str, phase: str, age_: str, detail: str) -> str:
    return f"{name:<24} {kind:<8} {phase:<11} {age_:<5} {detail}".rstrip()


def _overall(members: Iterable[JobStatus]) -> str:
    """An experiment's phase: running while a run is, else failed if a run failed."""
    phases = [m.phase for m in members]
    unfinished = [p for p in phases if p not in FINISHED]
    if unfinished:
        return RUNNING
    return next((p for p in (FAILED, CANCELLED) if p in phases), SUCCEEDED)


# TensorFlow's lines about a peer it cannot reach, which it repeats several times a second for as
# long as the peer stays away. The C++ ones come from EagerContext::MaybeRegisterFunctionRemotely
# and MaybeRemoveFunctionRemotely (tensorflow/core/common_runtime/eager/context.cc, `LOG(ERROR)
# << "Failed to register function remotely due to "`) and gRPC's `Socket closed`; the Python one
# from ClusterCoordinator's WorkerPreemptionHandler.wait_on_failure
# (tensorflow/python/distribute/coordinator/cluster_coordinator.py, `"Worker %s failed with %r:%s"`).
REPEATED = re.compile(
    r"^(?:[EW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+\.cc:\d+\] .*"
    r"(?:Failed to (?:register|remove) function remotely|Socket closed|UNAVAILABLE|failed to connect to all addresses)"
    r"|ERROR:tensorflow:Worker \S+ failed with )"
)
# The lines such a message goes on with (gRPC's details and TensorFlow's hint).
CONTINUED = re.compile(
    r"^(?:Additional GRPC error information from remote target |:UNKNOWN:Error received from peer "
    r"|This could happen if the remote target has been disconnected)"
)
STAMP = re.compile(r"^[EW]\d{4} \d\d:\d\d:(\d+\.\d+) ")  # absl's: E0000 00:00:<unix seconds>
BURST_GAP = 60.0  # seconds without such a line after which the next one starts a new burst, shown again


class Fold:
    """One stream's lines (a task's), with TensorFlow's repeats folded: the first message of a
    burst is shown whole, the rest are counted and said in one line when a line of another kind
    comes, or the stream ends. Feed it lines without their newline; it returns those to show."""

    def __init__(self) -> None:
        self.hidden = 0
        self.folding = False  # inside a repeated message: its continuation lines go with it
        self.last: float | None = None  # the time of the burst's latest message (absl's stamp)

    def line(self, line: str) -> list[str]:
        if REPEATED.match(line):
            stamped = STAMP.match(line)
            stamp = float(stamped.group(1)) if stamped else None
            fresh = self.last is None or (stamp is not None and stamp - self.last > BURST_GAP)
            self.last = stamp if stamp is not None else (self.last or 0.0)
            self.folding = not fresh
            if fresh:
                return [*self.end(), line]
        elif CONTINUED.match(line):
            if not self.folding:
                return [line]
        else:
            self.folding = False
            return [*self.end(), line]
        self.hidden += 1
        return []

    def end(self) -> list[str]:
        """The count of the lines hidden since the last one said."""
        hidden, self.hidden = self.hidden, 0
        if not hidden:
            return []
        return [f"... {hidden} more TensorFlow line{'s' * (hidden > 1)} like this hidden; --verbose shows them"]


def logs(chunks: Iterable[bytes], verbose: bool = True) -> None:
    """A task's log as it is, or (not `verbose`) with TensorFlow's repeats folded (`Fold`)."""
    if verbose:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        return
    fold, rest = Fold(), b""
    for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        shown = [out for raw in lines for out in fold.line(raw.decode(errors="replace"))]
        sys.stdout.write("".join(f"{line}\n" for line in shown))
        sys.stdout.flush()
    shown = [*fold.line(rest.decode(errors="replace"))] if rest else []
    sys.stdout.write("".join(f"{line}\n" for line in [*shown, *fold.end()]))
    sys.stdout.flush()


def deleted(handle: Handle, what: str | None) -> None:
    if what is None:
        typer.echo(f"job {handle.name} not found {handle.place}; nothing to delete")
    else:
        typer.echo(f"job {handle.name} deleted: {what}")


def outcome(o: Outcome) -> None:
    if o.phase == SUCCEEDED:
        typer.echo(f"job {o.name} succeeded" + (f"; model dir {o.model_dir}" if o.model_dir else ""))
    else:
        typer.echo(f"error: {o.message}", err=True)


def planned(result, output: str, every: bool = False) -> None:
    """`pmlctl plan`'s answer (deploy/planning.py's Result): the JSON contract, or a table of the
    shapes in the goal's order (the first 12 and the recommended one, or `every` one), where each
    step's time goes, the shapes that cannot run and why, and the recommendation."""
    from deploy import planning

    if output == "json":
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    cal, table = result.calibration, result.table
    typer.echo(f"calibration: {cal.where}")
    typer.echo(
        f"  batch {cal.batch}, {cal.examples_per_epoch} examples per epoch, parameters {cal.parameter_bytes / 1e6:.2f} MB; "
        f"one process {cal.local_step * 1e3:.2f} ms per step, a ps worker's compute {cal.worker_compute * 1e3:.2f} ms, "
        f"{(cal.bytes_in + cal.bytes_out) / 1e6:.2f} MB per worker step, all-reduce {cal.allreduce_overhead * 1e3:.2f} ms + its bytes"
    )
    typer.echo(f"machines: {table.region}, prices taken {table.taken}; {result.epochs} epochs; goal: {result.goal}")
    order = list(result.shapes)
    shown = order if every else order[:12]
    if result.recommended not in shown:
        shown.append(result.recommended)
    typer.echo(
        f"{'':2}{'SHAPE':<12} {'MACHINE':<16} {'EXAMPLES/S':>10} {'TIME':>8} {'PRICE':>9}  "
        f"{'COMPUTE':>7} {'TRANSFER':>8} {'WAITING':>7}  (ms per step)"
    )
    for s in shown:
        mark = "* " if s is result.recommended else "  "
        p = s.parts
        typer.echo(
            f"{mark}{s.label:<12} {s.machine:<16} {s.examples_per_sec:>10.0f} {planning.readable_time(s.seconds, 1):>8} "
            f"{planning.usd(s.price_usd):>9}  {p.compute * 1e3:>7.2f} {p.transfer * 1e3:>8.2f} {p.waiting * 1e3:>7.2f}"
        )
    if len(shown) < len(order):
        typer.echo(f"  ... {len(order) - len(shown)} more shapes: --all shows them, -o json lists them")
    reasons: dict[str, list[str]] = {}
    for s in result.refused:
        reasons.setdefault(s.problem, []).append(s.label)
    for problem, labels in reasons.items():
        typer.echo(f"cannot run: {', '.join(dict.fromkeys(labels))}: {problem}")
    typer.echo(f"recommended: {result.recommended.label} on {result.recommended.machine}. {result.why}")
