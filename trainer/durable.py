"""Writes that a crash leaves whole: a file is written beside its target, synced, then renamed over it.

Used by the stores (trainer/storage/) and by the files the trainer writes itself (`run.json`,
`metrics.jsonl`, `result.json`): a local model dir may be a volume that outlives this machine.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


def replace(partial: pathlib.Path, target: pathlib.Path) -> None:
    """Rename a fully written `partial` over `target`, so that a crash leaves one or the other whole.

    Without the fsyncs a power loss or a node crash can leave `target` renamed but empty: the
    rename reaches the disk before the data does (ext4 with delalloc, XFS). The data is synced
    before the rename, and the folder after it, so that the rename itself is on disk too (see
    fsync(2): "an explicit fsync() on a file descriptor for the directory is also needed").
    """
    with open(partial, "rb+") as out:
        os.fsync(out.fileno())
    os.replace(partial, target)
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def partial(target: pathlib.Path) -> pathlib.Path:
    """Where `target` is written before it replaces the file: a hidden name of this process's own,
    so that two processes writing the same file never write into each other's."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.{os.getpid()}.part")


def write_text(path: pathlib.Path, text: str) -> None:
    written = partial(path)
    written.write_text(text)
    replace(written, path)


def write_json(path: pathlib.Path, doc: dict[str, Any]) -> None:
    write_text(path, json.dumps(doc, indent=2) + "\n")
