"""What the backends share below the Store interface: whole-or-nothing downloads, and error
messages cut down to one line."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable
from typing import BinaryIO

from pml_trainer import durable

Progress = Callable[[int], None]  # told the size of every chunk downloaded
# What a network error boils down to, where urllib3 and requests wrap it in a paragraph.
NETWORK_REASONS = (
    "Connection refused",
    "Connection reset",
    "timed out",
    "Name or service not known",
    "Temporary failure in name resolution",
    "No route to host",
)


class CountingFile:
    """A file being downloaded into, telling `progress` of every chunk."""

    def __init__(self, out: BinaryIO, progress: Progress | None):
        self.out, self.progress = out, progress

    def write(self, chunk: bytes) -> int:
        if self.progress:
            self.progress(len(chunk))
        return self.out.write(chunk)


def download(target: pathlib.Path, fill: Callable[[CountingFile], object], progress: Progress | None) -> pathlib.Path:
    """`fill(file)` writes the content; `target` is replaced only once it is complete."""
    partial = durable.partial(target)
    try:
        with open(partial, "wb") as out:
            fill(CountingFile(out, progress))
        durable.replace(partial, target)
        return target
    finally:
        partial.unlink(missing_ok=True)


def reason(err: BaseException) -> str:
    """Why a request failed, in a few words."""
    text = str(err)
    # urllib3 hides the error document of a reply it retried (503 SlowDown) behind this.
    replies = re.search(r"too many (\d{3}) error responses", text)
    if replies:
        return f"{replies.group(1)} replies, each time it was asked"
    # google-cloud-storage quotes the whole JSON error document; its reason says it all.
    status, why = re.match(r"(\d{3}) ", text), re.search(r'"reason":\s*"(\w+)"', text)
    if status and why:
        return f"{status.group(1)} {why.group(1)}"
    return next((r.lower() for r in NETWORK_REASONS if r in text), first_line(err))


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]
