"""Datasets on gs:// or s3://, copied once into a local cache with a progress bar on stderr.

The cache keeps a manifest of each file's version (ETag or generation); a later run lists the
remote folder, finds every version and size unchanged and downloads nothing. A cached folder is a
mirror: what was removed remotely is removed here too, or a file moved from cats/ to dogs/ would
be one image with two labels, and two machines could train on different sets of files.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pathlib
import sys
import time

from pml_trainer import durable
from pml_trainer.log import log
from pml_trainer.storage import Entry, StorageError, Store, open_store, parse

MANIFEST = ".pml-manifest.json"
MANIFEST_EVERY = 2.0  # seconds between writes of the manifest while files download


def cache_root() -> pathlib.Path:
    default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "parallel-ml" / "data"
    return pathlib.Path(os.environ.get("PML_DATA_CACHE", default))


def local_folder(uri: str, s3_endpoint: str | None) -> pathlib.Path:
    """The local copy of a remote folder (everything below it)."""
    location = parse(uri)
    target = cache_root() / location.scheme / location.bucket / location.prefix
    store = open_store(uri, s3_endpoint)
    _sync(store, store.list(), target, uri, mirror=True)
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
    # One file of the folder: its siblings in the cache may belong to other datasets; left alone.
    _sync(store, entries, target, uri, mirror=False)
    return target / name


def _sync(store: Store, entries: list[Entry], target: pathlib.Path, uri: str, mirror: bool) -> None:
    """Make `target` hold `entries` as they are remotely; with `mirror`, nothing else either."""
    if not entries:
        raise StorageError(f"{uri}: nothing there; upload the dataset first or fix the location")
    manifest_path = target / MANIFEST
    manifest = _read_manifest(manifest_path, uri)
    removed = _remove_others(target, {e.name for e in entries}, manifest) if mirror else 0
    if removed:
        _write_manifest(manifest_path, manifest)
        log.info(f"{uri}: removed {removed} cached file(s) no longer there")
    missing = [e for e in entries if not _cached(e, target / e.name, manifest)]
    if not missing:
        log.info(f"{uri}: using the cached copy in {target}")
        return
    bar = ProgressBar(f"downloading {uri}", sum(e.size for e in missing), len(missing))
    written = time.monotonic()
    for entry in missing:
        store.get_file(entry.name, target / entry.name, bar.advance)
        bar.file_done()
        manifest[entry.name] = entry.version
        # Not after every file: each write is two fsyncs, and a folder of small images has
        # thousands. A file downloaded since the last write is merely downloaded again after a crash.
        if time.monotonic() - written >= MANIFEST_EVERY:
            _write_manifest(manifest_path, manifest)
            written = time.monotonic()
    _write_manifest(manifest_path, manifest)
    bar.finish()
    log.info(f"{uri}: downloaded to {target}")


def _cached(entry: Entry, path: pathlib.Path, manifest: dict) -> bool:
    """Whether the cached copy is this version of the file. Its size is checked too: a version
    tag says what was downloaded, not that the file on disk is still whole."""
    try:
        return manifest.get(entry.name) == entry.version and path.stat().st_size == entry.size
    except FileNotFoundError:
        return False


def _remove_others(target: pathlib.Path, wanted: set[str], manifest: dict) -> int:
    """Delete cached files that are not in `wanted`, and the folders that leaves empty (an empty
    class folder would still count as a class); return how many files went."""
    if not target.is_dir():
        return 0
    removed = 0
    for path in sorted(target.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # deepest first
        name = path.relative_to(target).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif name not in wanted and name != MANIFEST and not path.name.endswith(".part"):
            # (.part: a download in progress, perhaps another task's on this machine)
            path.unlink(missing_ok=True)
            manifest.pop(name, None)
            removed += 1
    return removed


def _read_manifest(path: pathlib.Path, uri: str) -> dict:
    """The versions of the cached files; none when the manifest is unreadable.

    A manifest that a crash cut short (or any other damage) says nothing reliable about the files
    beside it. Read as empty, it makes every file be downloaded again, which is slow but right; the
    cache is only a copy. Raising instead stopped every start on this machine until someone found
    and deleted the file.
    """
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict):
        return manifest
    log.warning(f"{uri}: the cache's manifest {path} is unreadable (cut short by a crash?); downloading again")
    return {}


def _write_manifest(path: pathlib.Path, manifest: dict) -> None:
    durable.write_text(path, json.dumps(manifest))  # synced: see pml_trainer.durable


class ProgressBar:
    """A progress bar on stderr: redrawn in place on a terminal, a log line now and then otherwise."""

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
        line = (
            f"{self.label} [{bar:<30}] {share:4.0%} {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB, "
            f"{self.done_files}/{self.files} files"
        )
        if self.tty:
            sys.stderr.write(f"\r{line}")
            sys.stderr.flush()
        else:
            log.info(line)


def matching_files(pattern: str, s3_endpoint: str | None) -> list[pathlib.Path]:
    """The local copies of the remote files a glob names (`gs://b/train/*.tfrecord`), sorted.

    The folder before the first wildcard is listed once and only the matching files are fetched;
    the rest of the cached folder is left alone, as for `local_file`.
    """
    folder, _, _ = pattern.partition("*")
    folder = folder.rpartition("/")[0]
    if "://" not in folder or folder.endswith(":/"):
        raise StorageError(f"{pattern}: put the wildcard below the bucket, such as gs://bucket/train/*.tfrecord")
    wanted = pattern[len(folder) + 1 :]
    location = parse(folder)
    target = cache_root() / location.scheme / location.bucket / location.prefix
    store = open_store(folder, s3_endpoint)
    entries = [e for e in store.list() if fnmatch.fnmatchcase(e.name, wanted)]
    if not entries:
        raise StorageError(f"{pattern}: no file matches; check the pattern, or upload the files first")
    _sync(store, entries, target, pattern, mirror=False)
    return sorted(target / e.name for e in entries)
