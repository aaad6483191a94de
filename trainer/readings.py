"""What a task spends, in its own words: the figures `pmlctl plan`'s probe needs (deploy/calibrate.py).

With PML_READINGS=1 in its environment, every task of a job (chief, workers, ps) samples, every
INTERVAL seconds, its CPU time (user and system, all its threads, to the nanosecond), the bytes
every interface of its network namespace received, and the most memory it has held (VmHWM).
The chief also marks when each epoch's training began and ended: the validation, checkpoints and
uploads between epochs are not a step's cost. Each task publishes its readings whole, as
readings/<task>.json in the model dir, every PUBLISH seconds from a thread of its own (a slow upload must not leave a gap
in the samples) and as it exits, waiting at most FINISH_SECONDS for that last upload. So the probe reads
them wherever the task ran (a process here, a container, a pod on a node pmlctl never sees),
through the store, as it reads result.json.

Samples carry the wall clock, and the probe takes each task's figures at the chief's marks by
interpolating between the samples around them, never across a gap of more than MAX_GAP: a
cluster's nodes keep their clocks within milliseconds of each other (NTP), and a probe's epoch
lasts a third of a second or more.

The bytes are counted per network namespace, named by the host and the namespace's inode: the
tasks of a local job share one namespace (one loopback), while each container and each pod has its
own. A task in the reader's own namespace counts traffic that is not the job's, so it gives none.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import platform
import socket
import threading
import time
from dataclasses import dataclass, field

from pml_trainer.log import log

ENV = "PML_READINGS"
FOLDER = "readings"
INTERVAL = 0.02  # seconds between samples: a probe's epochs last 0.3 s or more
PUBLISH = 5.0  # seconds between uploads, besides the one as the task exits (each costs the task CPU)
FINISH_SECONDS = 10.0  # the most an exiting task waits for its last upload
MAX_GAP = 0.5  # seconds: samples further apart than this say nothing of the time between them
# Past this many samples every other one goes (and the interval doubles): a job left with
# PML_READINGS set for hours keeps bounded readings, and still covers all its time.
MOST_SAMPLES = 12_000

_recorder: _Recorder | None = None


def space() -> str:
    """This process's network namespace, named so that the same name on two machines is unlikely:
    the host (a container's and a pod's own) and the namespace's inode."""
    return f"{socket.gethostname()}:{os.stat('/proc/self/ns/net').st_ino}"


def _sample() -> list[float]:
    """[wall clock, CPU seconds, bytes received, most memory held in bytes]."""
    received = 0.0
    for line in pathlib.Path("/proc/self/net/dev").read_text().splitlines()[2:]:
        received += float(line.partition(":")[2].split()[0])
    held = 0.0
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            held = float(line.split()[1]) * 1024
    return [time.time(), time.process_time(), received, held]


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "?"


class _Recorder:
    def __init__(self, task: str, model_dir: str, s3_endpoint: str | None):
        self.task, self.model_dir, self.s3_endpoint = task, model_dir, s3_endpoint
        self.lock = threading.Lock()
        self.publishing = threading.Lock()  # the sampler's thread and the exit both publish, one at a time
        self.doc = {
            "task": task,
            "space": space(),
            "host": socket.gethostname(),
            "cpus": len(os.sched_getaffinity(0)),
            "cpu_model": cpu_model(),
            "samples": [_sample()],
            "marks": [],  # [wall clock when training began, when it ended, step]: the chief's epochs
        }
        self.interval = INTERVAL
        self.stopped = threading.Event()
        self.store = None
        self.warned = False

    def begin(self) -> None:
        threading.Thread(target=self.sample, name="readings", daemon=True).start()
        threading.Thread(target=self.upload, name="readings-upload", daemon=True).start()

    def sample(self) -> None:
        while not self.stopped.wait(self.interval):  # the sampling period, until the task exits
            self.add(_sample())

    def upload(self) -> None:
        while not self.stopped.wait(PUBLISH):
            self.publish()

    def add(self, sample: list[float]) -> None:
        with self.lock:
            self.doc["samples"].append(sample)
            if len(self.doc["samples"]) > MOST_SAMPLES:
                self.doc["samples"], self.interval = self.doc["samples"][::2], self.interval * 2

    def mark(self, step: int, seconds: float) -> None:
        with self.lock:
            now = _sample()
            self.doc["samples"].append(now)
            self.doc["marks"].append([now[0] - seconds, now[0], step])

    def publish(self) -> None:
        from pml_trainer.storage import open_store

        try:
            with self.publishing:
                with self.lock:
                    data = json.dumps(self.doc).encode()
                self.store = self.store or open_store(self.model_dir, self.s3_endpoint)
                self.store.put_bytes(data, f"{FOLDER}/{self.task}.json")
        except Exception as err:  # a full disk, a folder a restart removed, storage down: training goes on
            if not self.warned:  # and the probe names the task whose readings are missing
                log.warning(f"{ENV}: cannot publish this task's readings: {err}")
                self.warned = True


def start(task: str, model_dir: str, s3_endpoint: str | None) -> None:
    """Sample this task from now on, where PML_READINGS asks for it."""
    global _recorder
    if os.environ.get(ENV) != "1" or _recorder is not None:
        return
    _recorder = _Recorder(task, model_dir, s3_endpoint)
    _recorder.begin()


def mark(step: int, seconds: float) -> None:
    """An epoch's training ended at `step`, after `seconds`."""
    if _recorder is not None:
        _recorder.mark(step, seconds)


def finish(seconds: float = FINISH_SECONDS) -> None:
    """The task is exiting: its last sample, published within `seconds`. Never raises: the task's
    own exit code matters more."""
    if _recorder is None:
        return
    _recorder.stopped.set()
    try:
        _recorder.add(_sample())
    except OSError as err:
        log.warning(f"{ENV}: cannot take this task's last sample: {err}")
    last = threading.Thread(target=_recorder.publish, name="readings-last", daemon=True)
    last.start()
    last.join(seconds)


# --- the probe's side -----------------------------------------------------------------------------


@dataclass
class Readings:
    """One task's published readings."""

    task: str
    space: str
    host: str
    cpus: int
    cpu_model: str
    samples: list[list[float]]
    marks: list[list[float]] = field(default_factory=list)

    @property
    def role(self) -> str:
        return self.task.rpartition("-")[0]

    def at(self, when: float) -> tuple[float, float] | None:
        """(CPU seconds, bytes received) at `when`, between the samples around it; None if the
        samples do not reach it, or leave a gap there."""
        for sample in self.samples:
            if sample[0] == when:  # a sample says what it saw, whatever the gap beside it
                return sample[1], sample[2]
        for before, after in itertools.pairwise(self.samples):
            if before[0] <= when <= after[0] and after[0] - before[0] <= MAX_GAP:
                share = 0.0 if after[0] == before[0] else (when - before[0]) / (after[0] - before[0])
                return (before[1] + share * (after[1] - before[1]), before[2] + share * (after[2] - before[2]))
        return None

    @property
    def memory(self) -> float:
        return max((s[3] for s in self.samples), default=0.0)


def load(documents: dict[str, bytes]) -> list[Readings]:
    """The readings of every task, from the files of readings/ (name: content). Raises ValueError
    on a file that is not a task's readings."""
    found = []
    for name, data in sorted(documents.items()):
        try:
            doc = json.loads(data)
            found.append(
                Readings(
                    str(doc["task"]),
                    str(doc["space"]),
                    str(doc["host"]),
                    int(doc["cpus"]),
                    str(doc["cpu_model"]),
                    sorted([float(v) for v in s[:4]] for s in doc["samples"]),
                    [[float(began), float(ended), int(step)] for began, ended, step in doc["marks"]],
                )
            )
            if not found[-1].samples:
                raise ValueError("no samples")
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise ValueError(f"{name}: not a task's readings ({err})") from None
    return found
