"""Where jobs can run, by name, and the one rule that picks where a command goes.

Each entry names a module and its `Target` class (deploy/target.py), as TorchX names its
schedulers (pytorch/torchx, torchx/schedulers/__init__.py, get_scheduler_factories). A new target
is one module and one line here, or, out of this tree, an entry point of the group
`parallel_ml.targets` in the package that holds it, as TorchX reads `torchx.schedulers` there
(load_group); unlike TorchX's, the entry points add to the built-in targets instead of replacing
them all. Either way pmlctl then takes `-t NAME`, shows the target's own options under its name in
--help, and routes every command to it.
"""

from __future__ import annotations

import functools
import importlib
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from deploy.target import Option, Target
from pml_trainer.errors import BadInput

TARGETS: dict[str, str] = {
    "local": "deploy.local:LocalTarget",
    "docker": "deploy.docker:DockerTarget",
    "k8s": "deploy.k8s.target:KubernetesTarget",
}
DEFAULT = "local"
GROUP = "parallel_ml.targets"  # [project.entry-points."parallel_ml.targets"] NAME = "module:Class"


def names() -> list[str]:
    return [*TARGETS, *(name for name in _plugins(tuple(sys.path)) if name not in TARGETS)]


@functools.cache
def _plugins(path: tuple[str, ...]) -> dict[str, EntryPoint]:
    """The installed packages' targets; read again only when sys.path changes (a test's plugin)."""
    return {entry.name: entry for entry in entry_points(group=GROUP)}


def load(name: str) -> type[Target]:
    if name in TARGETS:
        module, _, attribute = TARGETS[name].partition(":")
        built_in: type[Target] = getattr(importlib.import_module(module), attribute)
        return built_in
    entry = _plugins(tuple(sys.path))[name]
    where = f"entry point {entry.name} = {entry.value} (group {GROUP})"
    try:
        loaded = entry.load()
    except Exception as err:  # a plugin may fail in any way; pmlctl still answers, in one line
        raise BadInput(
            f"{where} cannot be loaded ({type(err).__name__}: {err}); fix or uninstall the package that declares it"
        ) from None
    if not (isinstance(loaded, type) and issubclass(loaded, Target)):
        raise BadInput(
            f"{where} is not a Target class (deploy/target.py); fix or uninstall the package that declares it"
        )
    return loaded


def unknown(name: str) -> BadInput:
    return BadInput(f"--target {name}: unknown target; use {_either(names())}")


def options(command: str) -> list[tuple[Option, list[str]]]:
    """The target options `command` takes, each once, with the targets that declare it. Two targets
    may share an option (docker inherits local's); they may not give one name two meanings."""
    found: dict[str, tuple[Option, list[str]]] = {}
    for name in names():
        for option in load(name).options:
            if command not in option.commands:
                continue
            seen = found.setdefault(option.key, (option, []))
            if seen[0] != option:
                raise RuntimeError(f"targets {seen[1][0]} and {name} both declare --{option.name}, differently")
            seen[1].append(name)
    return list(found.values())


def choose(command: str, target: str | None, given: dict[str, Any], name: str | None = None) -> type[Target]:
    """Where a command goes, the same way for every command: `--target`; else the target whose
    locating options were given (--context, -n); else the target that holds the job's name (for a
    new job only where this machine keeps a record of it: no cluster is asked on submit); else
    local, where that takes the options given."""
    owners = {option.key: targets for option, targets in options(command)}
    if target is not None:
        if target not in names():
            raise unknown(target)
        for key in given:
            if target not in owners[key]:
                raise BadInput(
                    f"--{key.replace('_', '-')} is an option of -t {_either(owners[key])}, not of -t {target}; "
                    f"drop it or pass -t {owners[key][0]}"
                )
        return load(target)
    candidates = [n for n in names() if all(n in owners[key] for key in given)]
    if not candidates:
        flags = ", ".join(f"--{key.replace('_', '-')} (-t {_either(owners[key])})" for key in given)
        raise BadInput(f"{flags}: no target takes all of these; pass the options of one target")
    located = [n for n in candidates if any(o.locates and o.key in given for o in load(n).options)]
    if located:
        return load(located[0])
    if name is not None:
        answers = {n: load(n).knows(name) for n in candidates}
        for wanted in ("yes",) if command == "submit" else ("yes", "maybe"):
            held = [n for n in candidates if answers[n] == wanted]
            if held:
                return load(held[0])
    return load(DEFAULT if DEFAULT in candidates else candidates[0])


def found_nowhere(command: str, given: dict[str, Any], name: str) -> str | None:
    """When no target was named or located and none holds `name`: the one line that says so, with
    the targets that were looked in and those that could not be asked (a cluster without a kubeconfig)."""
    owners = {option.key: targets for option, targets in options(command)}
    if any(o.locates and o.key in given for o, _ in options(command)):
        return None
    candidates = [n for n in names() if all(n in owners[key] for key in given)]
    if any(load(n).knows(name) != "no" for n in candidates):
        return None
    unasked = {n: why for n in candidates if (why := load(n).unasked())}
    looked = [f"-t {n}" for n in candidates if n not in unasked]
    where = f"no job of that name in {_either(looked)}" if looked else "no target could be asked"
    skipped = "".join(f"; -t {n} was not asked: {why}" for n, why in unasked.items())
    return f"job {name} not found: {where}{skipped}; `pmlctl list` shows the known jobs"


def choose_all(target: str | None, given: dict[str, Any]) -> list[type[Target]]:
    """The targets `pmlctl list` shows: as `choose` says, and without -t or a locating option every
    target that keeps its jobs on this machine."""
    if target is not None or any(o.locates and o.key in given for o, _ in options("list")):
        return [choose("list", target, given)]
    return [load(n) for n in names() if load(n).listed_by_default]


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"
