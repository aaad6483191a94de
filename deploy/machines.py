"""The machines `pmlctl plan` plans for: the packaged table (machines.yaml, with its sources and the
date its figures were taken), machines a YAML file adds, and figures the flags override."""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, fields, replace
from typing import Any

import yaml

from pml_trainer.errors import BadInput

TABLE = pathlib.Path(__file__).with_name("machines.yaml")


@dataclass(frozen=True)
class Machine:
    name: str
    vcpus: float
    memory_gb: float
    egress_gbps: float  # 0: no network (a machine for one process only)
    usd_per_hour: float
    spot_usd_per_hour: float | None = None
    speed: float = 1.0  # a step's compute, relative to the calibration's machine
    shared_cores: float = 0.0  # >0: every task of the job shares these cores on this one machine
    # With shared_cores: the CPU seconds a GB costs this machine to move from one task's host to
    # another's, beyond what the loopback costs (the calibration's probes ran over the loopback).
    link_cpu_per_gb: float = 0.0
    study: str | None = None  # which of the study's machines it stands for

    @property
    def rate(self) -> float:
        """Egress in bytes/s."""
        return self.egress_gbps * 1e9 / 8


# The numbers a machine has, which --set and a machines file may give.
FIGURES = tuple(f.name for f in fields(Machine) if f.name not in ("name", "study"))


@dataclass(frozen=True)
class Table:
    machines: dict[str, Machine]
    region: str
    taken: str
    sources: tuple[str, ...]

    def get(self, name: str) -> Machine:
        if name not in self.machines:
            raise BadInput(
                f"--machine {name}: not in the machine table; use one of {', '.join(self.machines)}, "
                "or add it with --machines FILE.yaml"
            )
        return self.machines[name]


def load(extra: pathlib.Path | None = None, settings: list[str] | None = None, base: pathlib.Path = TABLE) -> Table:
    """The packaged table, with `extra`'s machines added or merged over it, and `settings`
    (MACHINE.FIELD=VALUE) over both."""
    doc = _read(base)
    found: dict[str, dict[str, Any]] = {name: dict(v) for name, v in (doc.get("machines") or {}).items()}
    if extra is not None:
        added = _read(extra)
        if not isinstance(added.get("machines"), dict):
            raise BadInput(
                f"--machines {extra}: write the machines under `machines:`, e.g. machines: {{m1: {{vcpus: 4, ...}}}}"
            )
        for name, figures in added["machines"].items():
            if not isinstance(figures, dict):
                raise BadInput(
                    f"--machines {extra}: {name}: give its figures as a mapping, e.g. {{vcpus: 4, memory_gb: 16}}"
                )
            found[str(name)] = {**found.get(str(name), {}), **figures}
        for key in ("region", "taken"):
            doc[key] = added.get(key, doc.get(key))
    for setting in settings or []:
        name, field, value = _setting(setting, found)
        found[name][field] = value
    machines = {name: _machine(name, figures, extra) for name, figures in found.items()}
    return Table(machines, str(doc.get("region", "?")), str(doc.get("taken", "?")), tuple(doc.get("sources", ())))


def _read(path: pathlib.Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"--machines {path}: no such file; give a YAML file of machines") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise BadInput(f"--machines {path}: cannot read it as YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise BadInput(f"--machines {path}: a machine file is a mapping with `machines:`")
    return doc


def _setting(text: str, found: dict[str, dict[str, Any]]) -> tuple[str, str, float]:
    target, _, value = text.partition("=")
    name, _, field = target.rpartition(".")
    if not name or not value:
        raise BadInput(f"--set {text}: write it as MACHINE.FIELD=VALUE, e.g. n2-standard-8.egress_gbps=4")
    if name not in found:
        raise BadInput(f"--set {text}: no machine {name}; use one of {', '.join(found)}")
    if field not in FIGURES:
        raise BadInput(f"--set {text}: {field} is not a figure; use one of {', '.join(FIGURES)}")
    try:
        number = float(value)
    except ValueError:
        raise BadInput(f"--set {text}: {value} is not a number") from None
    if not 0 <= number < math.inf:
        raise BadInput(f"--set {text}: give a number, 0 or more")
    return name, field, number


def _machine(name: str, figures: dict[str, Any], source: pathlib.Path | None) -> Machine:
    known = {f.name for f in fields(Machine)} - {"name"}
    unknown = sorted(set(figures) - known)
    where = f"--machines {source}: " if source else ""
    if unknown:
        raise BadInput(f"{where}{name}: unknown figure {unknown[0]}; use {', '.join(sorted(known))}")
    missing = [f for f in ("vcpus", "memory_gb", "egress_gbps", "usd_per_hour") if f not in figures]
    if missing:
        raise BadInput(
            f"{where}{name}: {missing[0]} is missing; every machine needs vcpus, memory_gb, egress_gbps and usd_per_hour"
        )
    try:
        machine = Machine(name, **figures)
        numbers = {f: getattr(machine, f) for f in FIGURES if getattr(machine, f) is not None}
        for field, value in numbers.items():
            # NaN passes `< 0`, and would price a shape at $nan.
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0 or value == math.inf:
                raise ValueError(field)
    except (TypeError, ValueError) as err:
        raise BadInput(f"{where}{name}: {err}: figures are numbers, 0 or more") from None
    if machine.speed <= 0:
        raise BadInput(f"{where}{name}: speed must be above 0 (1: as fast as the calibration's machine)")
    return replace(machine, vcpus=float(machine.vcpus))
