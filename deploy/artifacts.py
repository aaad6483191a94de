"""`pmlctl artifacts`: what a job wrote into its model dir, wherever that is.

Checkpoints are shown one line each, with the latest published one marked; files of a
checkpoint the pointer does not list (an upload cut short) are marked unpublished. The
SavedModel is one line; everything else is one line per file.
"""

from __future__ import annotations

from collections import defaultdict

from pml_trainer import checkpoints
from pml_trainer.storage import Entry, open_store

KINDS = {
    "checkpoints/": "checkpoint",
    "logs/": "events",
    "saved_model/": "saved model",
    "metrics.jsonl": "metrics",
    "eval.jsonl": "metrics",
    "result.json": "result",
}


def rows(location: str, s3_endpoint: str | None = None) -> list[tuple[str, str, int, int]]:
    """(kind, name, bytes, files) for everything below `location`, checkpoints newest first."""
    store = open_store(location, s3_endpoint)
    entries = [e for e in store.list() if not e.name.startswith(".pml-")]
    published = checkpoints.published(store)
    groups: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for entry in entries:
        groups[_group(entry.name, published)].append(entry)
    ordered = sorted(groups.items(), key=lambda item: _order(item[0], published))
    return [(kind, name, sum(e.size for e in files), len(files)) for (kind, name), files in ordered]


def _group(name: str, published: list[str]) -> tuple[str, str]:
    kind = next((k for prefix, k in KINDS.items() if name.startswith(prefix)), "other")
    if kind == "saved model":
        return kind, "saved_model/"
    if kind == "checkpoint" and name != f"{checkpoints.FOLDER}/{checkpoints.POINTER}":
        ckpt = name.rpartition("/")[2].partition(".")[0]
        if published and ckpt == published[-1]:
            return kind, f"{checkpoints.FOLDER}/{ckpt} (latest)"
        return kind, f"{checkpoints.FOLDER}/{ckpt}" + ("" if ckpt in published else " (unpublished)")
    return kind, name


def _order(group: tuple[str, str], published: list[str]):
    kind, name = group
    rank = ("checkpoint", "metrics", "result", "events", "saved model", "other").index(kind)
    step = -checkpoints.step_of(name.split()[0]) if kind == "checkpoint" and "ckpt-" in name else 0
    return rank, step, name


def table(location: str, s3_endpoint: str | None = None) -> str:
    found = rows(location, s3_endpoint)
    if not found:
        return f"{location}: nothing there yet"
    lines = [f"{location}", f"{'KIND':<12} {'SIZE':>10} {'FILES':>5}  NAME"]
    lines += [f"{kind:<12} {_size(size):>10} {files:>5}  {name}" for kind, name, size, files in found]
    return "\n".join(lines)


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for bigger in ("kB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
