"""Checkpoints in a remote model dir: published whole or not at all, fetched for a restore.

A remote `checkpoints/` folder looks like a local one written by `tf.train.CheckpointManager`:
`ckpt-N.data-*`, `ckpt-N.index` and the pointer file `checkpoint`, in TensorFlow's text format
with names relative to the folder. The pointer is written last, in one request, so a reader
never sees a "latest" whose files are not all there, whatever happens to the writer.
"""

from __future__ import annotations

import os
import pathlib
import re
import time

from trainer.report import say
from trainer.storage import Store

FOLDER = "checkpoints"
POINTER = "checkpoint"
_NAME = re.compile(r"^ckpt-(\d+)\.")
_PATHS = re.compile(r'^all_model_checkpoint_paths:\s*"(?:.*/)?([^"/]+)"', re.M)
_LATEST = re.compile(r'^model_checkpoint_path:\s*"(?:.*/)?([^"/]+)"', re.M)
# Tests set "<step>:<marker file>": the uploader stops for good before publishing the first
# checkpoint at or past <step>, after its files are up, and says so by creating the marker file;
# the test then kills the process. With the marker present it does not stop again.
PAUSE_HOOK = "PML_TEST_PAUSE_BEFORE_PUBLISH"


def pointer_text(names: list[str]) -> str:
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    return "\n".join(lines) + "\n"


def names_in_pointer(text: str) -> list[str]:
    """The checkpoints a pointer lists, oldest first, the latest last."""
    latest = _LATEST.search(text)
    if latest is None:
        return []
    names = [n for n in _PATHS.findall(text) if n != latest.group(1)]
    return names + [latest.group(1)]


def step_of(name: str) -> int:
    return int(name.rpartition("-")[2])


def published(store: Store) -> list[str]:
    text = store.get_bytes(f"{FOLDER}/{POINTER}")
    return names_in_pointer(text.decode()) if text else []


def files_of(local_dir: pathlib.Path, name: str) -> list[pathlib.Path]:
    """A checkpoint's files, data before index: the index is what makes the data readable."""
    return sorted(local_dir.glob(f"{name}.*"), key=lambda p: (p.suffix == ".index", p.name))


def publish(store: Store, local_dir: pathlib.Path, name: str, keep: int, kept: list[str]) -> list[str] | None:
    """Upload checkpoint `name` from `local_dir`, make it the latest, and prune to `keep`.

    `kept` is what the pointer lists now; the new list is returned. None means the checkpoint
    is gone locally: the manager deleted it as superseded, so it is not worth publishing.
    """
    files = files_of(local_dir, name)
    if not any(p.suffix == ".index" for p in files):
        return None
    for path in files:
        store.put_file(path, f"{FOLDER}/{path.name}")
    _pause_if_told(step_of(name))
    names = [n for n in kept if n != name][-(keep - 1):] if keep > 1 else []
    names.append(name)
    store.put_bytes(pointer_text(names).encode(), f"{FOLDER}/{POINTER}")
    _prune(store, names)
    return names


def _prune(store: Store, names: list[str]) -> None:
    """Delete every checkpoint file the pointer does not list, including leftovers of a crash."""
    wanted = {step_of(n) for n in names}
    for entry in store.list(FOLDER):
        match = _NAME.match(entry.name.rpartition("/")[2])
        if match and int(match.group(1)) not in wanted:
            store.delete(entry.name)


def _pause_if_told(step: int) -> None:
    hook = os.environ.get(PAUSE_HOOK)
    if not hook:
        return
    at, _, marker = hook.partition(":")
    if step < int(at) or os.path.exists(marker):
        return
    pathlib.Path(marker).write_text(str(step))
    say(f"test hook: checkpoint ckpt-{step} uploaded, not yet published; pausing")
    while True:
        time.sleep(60)


def fetch_latest(store: Store, local_dir: pathlib.Path) -> pathlib.Path | None:
    """Download the latest published checkpoint into `local_dir`; its path prefix, or None.

    Files already there are not fetched again (the evaluator polls), and older checkpoints
    there are removed. The local pointer lists only this checkpoint, so a CheckpointManager on
    `local_dir` starts from it.
    """
    names = published(store)
    if not names:
        return None
    name = names[-1]
    if not (local_dir / f"{name}.index").is_file():
        remote = [e for e in store.list(FOLDER) if e.name.rpartition("/")[2].startswith(f"{name}.")]
        if not any(e.name.endswith(".index") for e in remote):
            return None  # pruned between reading the pointer and listing: a newer one is published
        for entry in sorted(remote, key=lambda e: e.name.endswith(".index")):
            if not store.get_file(entry.name, local_dir / entry.name.rpartition("/")[2]):
                return None
    for path in local_dir.glob("ckpt-*"):
        if not path.name.startswith(f"{name}."):
            path.unlink(missing_ok=True)
    (local_dir / POINTER).write_text(pointer_text([name]))
    return local_dir / name


def latest_local(local_dir: pathlib.Path) -> pathlib.Path | None:
    """The latest checkpoint a local `checkpoints/` folder's pointer names, if its index is there."""
    pointer = local_dir / POINTER
    names = names_in_pointer(pointer.read_text()) if pointer.is_file() else []
    if not names or not (local_dir / f"{names[-1]}.index").is_file():
        return None
    return local_dir / names[-1]
