"""Datasets on gs:// or s3://, copied once into a local cache with a progress bar on stderr.

The cache keeps a manifest of each file's version (ETag or generation); a later run lists the
remote folder, finds every version unchanged and downloads nothing.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from trainer.storage import Entry, StorageError, Store, open_store, parse

MANIFEST = ".pml-manifest.json"


def cache_root() -> pathlib.Path:
    default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "parallel-ml" / "data"
    return pathlib.Path(os.environ.get("PML_DATA_CACHE", default))


def local_folder(uri: str, s3_endpoint: str | None) -> pathlib.Path:
    """The local copy of a remote folder (everything below it)."""
    location = parse(uri)
    target = cache_root() / location.scheme / location.bucket / location.prefix
    store = open_store(uri, s3_endpoint)
    _sync(store, store.list(), target, uri)
    return target


def local_file(uri: str, s3_endpoint: str | None) -> pathlib.Path:
    """The local copy of one remote file."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    if "://" not in parent:
        raise StorageError(f"{uri}: name a file in the bucket, such as {uri.rstrip('/')}/data.npz")
    location = parse(parent)
    target = cache_root() / location.scheme / location.bucket / location.prefix
    store = open_store(parent, s3_endpoint)
    entries = [e for e in store.list() if e.name == name]
    _sync(store, entries, target, uri)
    return target / name


def _sync(store: Store, entries: list[Entry], target: pathlib.Path, uri: str) -> None:
    if not entries:
        raise StorageError(f"{uri}: nothing there; upload the dataset first or fix the location")
    manifest_path = target / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    missing = [e for e in entries if manifest.get(e.name) != e.version or not (target / e.name).is_file()]
    if not missing:
        print(f"{uri}: using the cached copy in {target}", file=sys.stderr, flush=True)
        return
    bar = Progress(f"downloading {uri}", sum(e.size for e in missing), len(missing))
    for entry in missing:
        store.get_file(entry.name, target / entry.name, bar.advance)
        bar.file_done()
        manifest[entry.name] = entry.version
        partial = manifest_path.with_name(f"{MANIFEST}.{os.getpid()}.part")
        partial.write_text(json.dumps(manifest))
        os.replace(partial, manifest_path)
    bar.finish()


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line now and then in a log."""

    def __init__(self, label: str, total_bytes: int, total_files: int):
        self.label, self.total, self.files = label, max(total_bytes, 1), total_files
        self.done = self.done_files = 0
        self.tty = sys.stderr.isatty()
        self.last = time.monotonic()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if time.monotonic() - self.last >= (0.2 if self.tty else 5.0):
            self._draw()

    def file_done(self) -> None:
        self.done_files += 1

    def finish(self) -> None:
        self._draw()
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self) -> None:
        self.last = time.monotonic()
        share = min(self.done / self.total, 1.0)
        bar = "#" * int(share * 30)
        line = (f"{self.label} [{bar:<30}] {share:4.0%} {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB, "
                f"{self.done_files}/{self.files} files")
        sys.stderr.write(f"\r{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()
