"""A local folder as a Store: what a laptop run and a shared volume use."""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from pml_trainer import durable
from pml_trainer.storage import Entry, Location, StorageError, Store
from pml_trainer.storage._common import Progress


class LocalStore(Store):
    """Files in a folder, each written beside its target and renamed over it (pml_trainer.durable)."""

    def __init__(self, location: Location):
        self.location = location
        self.root = pathlib.Path(location.prefix)

    def put_file(self, source: pathlib.Path, name: str) -> None:
        partial = durable.partial(self.root / name)
        shutil.copyfile(source, partial)
        durable.replace(partial, self.root / name)

    def put_bytes(self, data: bytes, name: str) -> None:
        partial = durable.partial(self.root / name)
        partial.write_bytes(data)
        durable.replace(partial, self.root / name)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """One conditional operation at a time on this folder: flock(2) on the folder itself."""
        import fcntl  # POSIX only: reading and plain writes need no lock, and work anywhere

        folder = (self.root / name).parent
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def put_if(self, data: bytes, name: str, version: str | None) -> bool:
        with self._locked(name):
            if self._get_versioned(name)[1] != version:
                return False
            self.put_bytes(data, name)
            return True

    def enforces_preconditions(self) -> str | None:
        return None  # put_if and delete_if hold the folder's lock: nothing to probe

    def delete_if(self, name: str, version: str) -> bool:
        with self._locked(name):
            path = self.root / name
            if path.is_file() and self._version(path.stat()) != version:
                return False
            path.unlink(missing_ok=True)
            return True

    def _get_file(self, name: str, target: pathlib.Path, progress: Progress | None) -> bool:
        if not (self.root / name).is_file():
            return False
        partial = durable.partial(target)
        shutil.copyfile(self.root / name, partial)
        durable.replace(partial, target)
        if progress:
            progress(target.stat().st_size)
        return True

    def _get_bytes(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def _get_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        path = self.root / name
        try:
            with open(path, "rb") as f:
                return f.read(), self._version(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None, None

    @staticmethod
    def _version(stat: os.stat_result) -> str:
        # Every write is a rename of a new file, so a new inode; the mtime alone can repeat
        # within one clock tick of the file system (a few ms).
        return f"{stat.st_ino}.{stat.st_mtime_ns}.{stat.st_size}"

    def _list(self, under: str) -> list[Entry]:
        top = self.root / under
        if not top.is_dir():
            return []
        entries = []
        for path in top.rglob("*"):
            if path.is_file() and not path.name.endswith(".part"):
                stat = path.stat()
                entries.append(Entry(path.relative_to(self.root).as_posix(), stat.st_size, self._version(stat)))
        return sorted(entries, key=lambda e: e.name)

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            super().check_writable()
        except OSError as err:
            raise StorageError(f"{self.root}: cannot write there ({err.strerror}); pick another folder") from None
