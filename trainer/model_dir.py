"""A task's model dir, wherever it is.

Tasks always write into a local folder (`path`). For a local model dir that folder is the model
dir itself, as before. For gs:// or s3:// it is a staging folder on this machine, and what the
task publishes is uploaded from it in the background; checkpoints and the files a task appends
to are fetched from the remote model dir when the task starts.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile

from trainer import checkpoints
from trainer.storage import StorageError, Store, is_remote, open_store
from trainer.uploader import Uploader

CLOSE_TIMEOUT = 600.0  # how long a finished task waits for its last uploads
STAGING_ENV = "PML_STAGING_DIR"


def staging_dir(uri: str, task: str) -> pathlib.Path:
    """The same folder for a task each time it starts on this machine, so a restart cleans up."""
    root = pathlib.Path(os.environ.get(STAGING_ENV) or pathlib.Path(tempfile.gettempdir()) / "pml-staging")
    return root / f"{hashlib.sha1(uri.encode()).hexdigest()[:12]}-{task}"


class ModelDir:
    def __init__(self, uri: str, s3_endpoint: str | None, task: str, keep: int):
        self.uri = uri.rstrip("/")
        self.store: Store | None = None
        self.uploader: Uploader | None = None
        if not is_remote(uri):
            self.path = pathlib.Path(uri)
            return
        self.store = open_store(uri, s3_endpoint)
        # The remote model dir is the truth: whatever an earlier run left here may be stale.
        self.path = staging_dir(self.uri, task)
        shutil.rmtree(self.path, ignore_errors=True)
        (self.path / checkpoints.FOLDER).mkdir(parents=True)
        self.uploader = Uploader(self.store, self.path, keep)

    def where(self, relative: str) -> str:
        """Where `relative` ends up, for messages and result.json."""
        return f"{self.uri}/{relative}" if self.store else str(self.path / relative)

    def fetch(self, relative: str) -> None:
        """Bring a file the task rewrites or appends to (metrics.jsonl, eval.jsonl) here first."""
        if self.store:
            self.store.get_file(relative, self.path / relative)

    def latest_checkpoint(self) -> str | None:
        """The path prefix of the latest complete checkpoint, downloaded into path/checkpoints."""
        local = self.path / checkpoints.FOLDER
        latest = checkpoints.fetch_latest(self.store, local) if self.store else checkpoints.latest_local(local)
        return str(latest) if latest else None

    def publish_checkpoint(self, name: str) -> None:
        if self.uploader:
            self.uploader.checkpoint(name)

    def publish(self, relative: str) -> None:
        """Upload a file, or every file of a folder, as it is when its upload starts."""
        if self.uploader:
            (self.uploader.tree if (self.path / relative).is_dir() else self.uploader.file)(relative)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Wait for the uploads; raise StorageError if the storage did not take them in time."""
        if self.uploader and not self.uploader.wait(timeout):
            raise StorageError(f"{self.uri}: {self.uploader.pending()} upload(s) still failing after "
                               f"{timeout:.0f}s; the latest published checkpoint is kept")
        if self.uploader and self.uploader.failed:
            raise StorageError(f"{self.uri}: could not upload {', '.join(self.uploader.failed)}")
