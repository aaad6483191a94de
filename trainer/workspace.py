"""PLACEHOLDER until the ship branch lands: the files of a workspace and their digest."""

from __future__ import annotations

import hashlib
import pathlib

EXCLUDED = {".git", ".venv", "__pycache__", "runs"}


def files(root: pathlib.Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not EXCLUDED & set(p.relative_to(root).parts) and p.suffix != ".pyc"
    )


def digest(root: pathlib.Path) -> str:
    h = hashlib.sha256()
    for name in files(root):
        h.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return "sha256:" + h.hexdigest()
