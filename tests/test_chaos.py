"""Issue 25: checkpoints published through a storage proxy that fails by a seeded schedule.

Seed after seed, two and three chiefs (checkpoints.Writer, in process, no TensorFlow) on one model
dir claim it, publish, are killed, restart on their machine (adopting what they staged there) or on
another one, while a reader fetches the latest, each chief reaching storage through a ChaosProxy of
its own (tests/chaos_proxy.py): 503s, resets, delays, replies dropped after the server committed,
and on S3 multipart completions answered 200 with an error. The seed also chooses when another
chief acts in the middle of one's publish or claim. Everything runs in one thread, so a seed
replays the same way.

What must hold, checked by a client that bypasses the proxies:
- the pointer lists only complete checkpoints, each file of the size and content staged;
- every acknowledged checkpoint (publish returned) is still listed, or a newer complete one is;
- a chief that claims, and a reader, get the newest acknowledged checkpoint or a newer one, whole;
- a chief is fenced only by another chief's write, never by its own;
- nothing but StorageUnavailable (retryable) and Fenced comes out of the protocol.

`make test` runs it on moto and the GCS test server, `make test-ceph` on Ceph RGW. Each store gets
CHAOS_SECONDS (PML_CHAOS_SECONDS) or CHAOS_SEEDS seeds (PML_CHAOS_SEEDS), whichever ends first;
PML_CHAOS_SEED=17,40 runs just those. The summary prints the seeds run and the faults injected.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import pathlib
import random
import re
import time
from dataclasses import dataclass, field

import pytest
import urllib3.util.retry
from chaos_proxy import KINDS, ChaosProxy, Schedule
from conftest import measured
from storage_servers import remote, server  # noqa: F401 (fixtures)

from pml_trainer import checkpoints, faults, storage
from pml_trainer.checkpoints import FOLDER, POINTER_KEY, Fenced, Writer
from pml_trainer.storage import PRECONDITION_PROBE, StorageUnavailable, open_store

CHAOS_SECONDS = float(os.environ.get("PML_CHAOS_SECONDS", "20"))
CHAOS_SEEDS = int(os.environ.get("PML_CHAOS_SEEDS", "400"))
MACHINES = 3
PUBLISH_ATTEMPTS = 4  # the uploader retries for 10 minutes; then the chief exits, its work staged
# Over minio's part size (minio/helpers.py MIN_PART_SIZE, 5 MiB): put_object uploads it in two
# parts, so a CompleteMultipartUpload is sent.
BIG = 5 * 1024 * 1024 + 4096
FILLER = bytes(range(256)) * (BIG // 256 + 1)
# On GCS, faults go to requests on objects only: google-cloud-storage 3.17 also fetches the bucket's
# metadata from a thread of its own, for its traces (google/cloud/storage/_bucket_metadata_cache.py),
# as often as its timing makes it; the trainer never waits for that.
GCS_OBJECTS = [(".*", r"^/(upload/|download/)?storage/v1/b/[^/?]+/o([/?]|$)")]


class VirtualClock:
    """`time` for the storage layer's backoff (Store._patiently) and urllib3's: only sleeps move it, at
    once. In one thread waiting changes nothing but the run's length; a read is still tried as often
    within its patience as the trainer tries it, and that number does not hang on the machine's speed."""

    def __init__(self):
        self.slept = 0.0

    def sleep(self, seconds: float) -> None:
        self.slept += max(seconds, 0.0)

    def monotonic(self) -> float:
        return self.slept

    def time(self) -> float:
        return time.time() + self.slept


class Killed(BaseException):
    """The chief's process is gone (SIGKILL), in the middle of what it was doing."""


@contextlib.contextmanager
def environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


class Hooked:
    """A chief's store: before each request the world may act (another chief, a kill)."""

    OPS = ("put_file", "put_if", "delete_if", "get_file", "get_bytes", "get_versioned", "list")

    def __init__(self, store, world: World, machine: Machine):
        self._store, self._world, self._machine = store, world, machine

    def __getattr__(self, name):
        found = getattr(self._store, name)
        if name not in self.OPS:
            return found

        def call(*args, **kwargs):
            self._world.between(self._machine, name)
            return found(*args, **kwargs)

        return call


@dataclass
class Machine:
    index: int
    proxy: ChaosProxy
    staging: pathlib.Path  # its staging folder's checkpoints/
    writer: Writer | None = None
    previous: str | None = None  # the incarnation that staged here last (model_dir.WRITER_FILE)
    step: int = 0

    def __str__(self) -> str:
        return f"m{self.index}" + (f"/{self.writer.incarnation}" if self.writer else "")


@dataclass
class World:
    """One seed: the chiefs, what they were told, and what went wrong."""

    seed: int
    uri: str
    proxies: list[ChaosProxy]
    root: pathlib.Path
    direct: object  # a store that bypasses the proxies
    counts: collections.Counter = field(default_factory=collections.Counter)
    events: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # checkpoint -> step
    expected: dict[str, tuple[int, str]] = field(default_factory=dict)  # file name -> (size, sha256)

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        level = self.rng.choice([0.02, 0.05, 0.1, 0.15, 0.3])
        rates = {kind: level * self.rng.random() for kind in KINDS}
        rates["delay"] /= 4  # a delay costs the run its length and changes nothing in one thread
        completion_errors = self.rng.choice([0.0, 0.3, 0.7])
        gs = self.direct.location.scheme == "gs"
        self.schedules = [
            Schedule(
                f"{self.seed}/{i}",
                rates,
                completion_errors,
                only=GCS_OBJECTS if gs else None,
                # the bucket's random name, and the chief's probe of the preconditions (Store.enforces_preconditions)
                volatile=[re.escape(self.direct.location.bucket), rf"{re.escape(PRECONDITION_PROBE)}-[0-9a-f]+"],
            )
            for i in range(len(self.proxies))
        ]
        for proxy, schedule in zip(self.proxies, self.schedules, strict=True):
            proxy.schedule = schedule
        self.keep = self.rng.choice([1, 2, 3])
        self.big = self.rng.choice([0.0, 0.15, 0.3]) if self.direct.location.scheme == "s3" else 0.0
        self.meddling = self.rng.choice([0.0, 0.02, 0.06])  # per request of a chief: another acts first
        self.machines = [Machine(i, self.proxies[i], self.root / f"m{i}" / FOLDER) for i in range(MACHINES)]
        self.nested = False
        self.publishing: list[Machine] = []  # whose publish is under way, innermost last
        self.event(
            f"seed {self.seed}: fault rates {', '.join(f'{k} {v:.3f}' for k, v in rates.items())}, completion "
            f"errors {completion_errors}, keep {self.keep}, big files {self.big}, meddling {self.meddling}"
        )

    @property
    def injected(self) -> collections.Counter:
        return sum((s.injected for s in self.schedules), collections.Counter())

    def event(self, line: str) -> None:
        self.events.append(line)

    def problem(self, line: str) -> None:
        self.event(f"PROBLEM: {line}")
        self.problems.append(line)

    def open(self, proxy: ChaosProxy):
        with environment(proxy.env()):  # the GCS client reads its endpoint when it is made
            return open_store(self.uri)

    # --- the schedule -------------------------------------------------------------------------

    def run(self) -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(faults, "pause_before_publish", self.paused)
            clock = VirtualClock()
            patch.setattr(storage, "time", clock)
            patch.setattr(urllib3.util.retry, "time", clock)
            for _ in range(self.rng.randint(8, 16)):
                self.act()

    def act(self) -> None:
        live = [m for m in self.machines if m.writer]
        draw = self.rng.random()
        if not live or draw < 0.2:
            self.start(self.rng.choice(self.machines))
        elif draw < 0.8:
            self.save(self.rng.choice(live))
        elif draw < 0.9:
            machine = self.rng.choice(live)
            self.event(f"{machine} killed")
            machine.writer = None
        else:
            self.read()

    def paused(self, step: int) -> None:
        """A checkpoint's files are up, its pointer not yet written: the classic moment for another chief."""
        if self.publishing:
            self.between(self.publishing[-1], "write the pointer", at_pause=True)

    def between(self, machine: Machine, op: str, at_pause: bool = False) -> None:
        """Maybe let something else happen before `machine`'s chief sends `op`."""
        if self.nested or self.rng.random() >= (0.3 if at_pause else self.meddling):
            return
        what = self.rng.choice(["kill", "read", "start", "start", "save", "save"])
        others = [m for m in self.machines if m is not machine]
        if what == "kill":
            self.event(f"{machine} killed before {op}")
            self.counts["chiefs killed mid-operation"] += 1
            raise Killed
        self.counts["interleavings"] += 1
        self.nested = True
        try:
            self.event(f"  while {machine} is about to {op}:")
            if what == "read":
                self.read()
            elif what == "start":
                self.start(self.rng.choice(others))
            else:
                live = [m for m in others if m.writer]
                if live:
                    self.save(self.rng.choice(live))
        finally:
            self.nested = False

    # --- what a chief does ----------------------------------------------------------------------

    def start(self, machine: Machine) -> None:
        """A chief process starts on `machine` (its predecessor there, if alive, is killed): it
        claims the model dir and resumes, adopting what it staged, as ModelDir.latest_checkpoint does."""
        if machine.writer:
            self.event(f"{machine} killed: its pod is replaced")
            machine.writer = None
        staged_by = machine.previous
        staged = checkpoints.staged_checkpoint(machine.staging) if staged_by else None
        if staged is None:
            for path in machine.staging.glob("*"):
                checkpoints.remove(path)
        machine.staging.mkdir(parents=True, exist_ok=True)
        incarnation = f"{self.rng.getrandbits(32):08x}"
        machine.previous = incarnation
        store = self.open(machine.proxy)
        writer = Writer(Hooked(store, self, machine), incarnation, self.keep)
        self.counts["chiefs started"] += 1
        try:
            resumed = writer.claim(machine.staging, staged, staged_by)  # reads with patience (the main thread)
        except StorageUnavailable as err:
            self.event(f"m{machine.index}/{incarnation} could not claim ({type(err).__name__}: {err}); it exits")
            return
        except Killed:
            return
        except Exception as err:
            self.problem(f"claim by {incarnation} raised {type(err).__name__}: {err}")
            return
        machine.writer = writer
        store.patience = 0.0  # the uploader's thread reads impatiently and retries the publish itself
        self.counts["claims"] += 1
        if resumed is not None and resumed == staged:
            # As ModelDir.latest_checkpoint: the staged checkpoint is published.
            self.event(f"{machine} claimed, adopting its staged {staged.name}")
            self.counts["staged checkpoints adopted"] += 1
            checkpoints.keep_only(machine.staging, staged.name)
            machine.step = checkpoints.step_of(staged.name)
            self.publish(machine, staged.name)
            return
        if staged is not None:
            for path in [*machine.staging.glob("ckpt-*"), machine.staging / checkpoints.POINTER]:
                if resumed is None or not path.name.startswith(f"{resumed.name}."):
                    checkpoints.remove(path)
        self.event(f"{machine} claimed, resuming from {resumed.name if resumed else 'nothing'}")
        if resumed is not None:
            self.check_fetched(resumed, f"{machine}'s claim")
        machine.step = checkpoints.step_of(resumed.name) if resumed else 0

    def save(self, machine: Machine) -> None:
        machine.step += self.rng.randint(1, 3)
        local = f"ckpt-{machine.step}"
        header = f"{machine.writer.incarnation} step {machine.step}".encode()
        big = self.rng.random() < self.big
        (machine.staging / f"{local}.data-00000-of-00001").write_bytes(
            header + (FILLER[: BIG - len(header)] if big else b" data")
        )
        (machine.staging / f"{local}.index").write_bytes(header + b" index")
        pointer = machine.staging / checkpoints.POINTER
        names = checkpoints.names_in_pointer(pointer.read_text()) if pointer.is_file() else []
        pointer.write_text(checkpoints.pointer_text([*names, local]))
        self.counts["big data files" if big else "small data files"] += 1
        self.publish(machine, local)

    def publish(self, machine: Machine, local: str) -> None:
        """Publish as the uploader does: again while storage is unavailable, until the chief gives up."""
        writer = machine.writer
        name = f"ckpt-{writer.incarnation}-{checkpoints.step_of(local)}"
        for path in checkpoints.files_of(machine.staging, local):
            self.expected[f"{FOLDER}/{name}{path.name[len(local) :]}"] = digest(path.read_bytes())
        for attempt in range(PUBLISH_ATTEMPTS):
            self.publishing.append(machine)
            try:
                names = writer.publish(machine.staging, local)
            except Fenced as err:
                self.fenced(machine, writer, err)
                return
            except StorageUnavailable as err:
                self.event(f"{machine} publishing {name}, attempt {attempt + 1}: {type(err).__name__}: {err}")
                continue
            except Killed:
                machine.writer = None
                return
            except Exception as err:
                self.problem(f"{machine} publishing {name} raised {type(err).__name__}: {err}")
                machine.writer = None
                return
            finally:
                self.publishing.pop()
            self.acked[name] = checkpoints.step_of(name)
            self.counts["checkpoints acknowledged"] += 1
            self.event(f"{machine} published {name}: pointer {names}")
            if not names or names[-1] != name:
                self.problem(f"{machine} published {name}, but its pointer's latest is {names}")
            return
        self.event(f"{machine} gives up on {name} and exits; it stays staged")
        self.counts["chiefs that gave up"] += 1
        machine.writer = None

    def fenced(self, machine: Machine, writer: Writer, err: Fenced) -> None:
        text = self.direct.get_bytes(POINTER_KEY)
        by = checkpoints.writer_of(text)
        if by is None or by[0] == writer.incarnation:
            self.problem(f"{machine} fenced although the pointer is {'gone' if text is None else 'its own'}: {err}")
        else:
            self.event(f"{machine} fenced by {by[0]}")
            self.counts["chiefs fenced by another"] += 1
        machine.writer = None

    def read(self) -> None:
        """A reader (the evaluator, `pmlctl artifacts`) fetches the latest through a proxy of its own."""
        self.counts["reads"] += 1
        target = self.root / f"reader-{self.counts['reads']}"
        try:
            got = checkpoints.fetch_latest(self.open(self.proxies[-1]), target)
        except StorageUnavailable as err:
            self.event(f"reader: {type(err).__name__}: {err}")
            return
        except Exception as err:
            self.problem(f"fetch_latest raised {type(err).__name__}: {err}")
            return
        self.event(f"reader fetched {got.name if got else 'nothing'}")
        if got is not None:
            self.check_fetched(got, "a reader")
        elif self.acked:
            self.problem(f"a reader found no pointer although {max(self.acked, key=self.acked.get)} was acknowledged")

    # --- the invariants -----------------------------------------------------------------------

    def check_fetched(self, path: pathlib.Path, who: str) -> None:
        """A checkpoint downloaded by `who`: the newest acknowledged or newer, with the content staged."""
        newest = max(self.acked.values(), default=0)
        if checkpoints.step_of(path.name) < newest:
            self.problem(
                f"{who} got {path.name}, older than step {newest}, which was acknowledged "
                f"({', '.join(n for n, s in self.acked.items() if s == newest)})"
            )
        for file in path.parent.glob(f"{path.name}.*"):
            want = self.expected.get(f"{FOLDER}/{file.name}")
            if want is not None and digest(file.read_bytes()) != want:
                self.problem(f"{who} got {file.name} with content other than was staged")

    def supersedes(self, newer: str, older: str) -> bool:
        """A later step, or the same checkpoint published again under another chief's name."""
        if checkpoints.step_of(newer) != checkpoints.step_of(older):
            return checkpoints.step_of(newer) > checkpoints.step_of(older)
        return self.expected.get(f"{FOLDER}/{newer}.index") == self.expected.get(f"{FOLDER}/{older}.index")

    def check(self) -> None:
        """The end of a seed, seen past the proxies."""
        text = self.direct.get_bytes(POINTER_KEY)
        names = checkpoints.names_in_pointer(text.decode()) if text else []
        entries = {e.name: e for e in self.direct.list(FOLDER)}
        complete = []
        for name in names:
            lacking = checkpoints.missing_files(list(entries), name)
            if lacking:
                self.problem(f"the pointer lists {name}, which lacks {', '.join(lacking)} (pointer: {names})")
                continue
            wrong = [
                file
                for file, entry in entries.items()
                if checkpoints.checkpoint_of(file) == name
                and file in self.expected
                and entry.size != self.expected[file][0]
            ]
            if wrong:
                self.problem(f"the pointer lists {name}, whose {', '.join(wrong)} has a size other than was staged")
                continue
            complete.append(name)
        for name in self.acked:
            if name not in names and not any(self.supersedes(n, name) for n in complete):
                self.problem(f"{name} was acknowledged, and neither it nor a newer complete one is listed: {names}")
        if self.acked:
            self.counts["reads"] += 1
            try:
                got = checkpoints.fetch_latest(self.direct, self.root / "final")
            except StorageUnavailable as err:
                self.problem(f"the last reader could not fetch the latest: {type(err).__name__}: {err}")
                return
            if got is None:
                self.problem(f"no pointer at the end, although {len(self.acked)} checkpoints were acknowledged")
            else:
                self.check_fetched(got, "the last reader")


@pytest.fixture
def proxies(remote):
    """One proxy per machine, and one for the reader: each chief's way to storage fails on its own."""
    made = [ChaosProxy(remote.server) for _ in range(MACHINES + 1)]
    yield made
    for proxy in made:
        proxy.close()


def seeds() -> list[int]:
    chosen = os.environ.get("PML_CHAOS_SEED")
    return [int(s) for s in chosen.split(",")] if chosen else list(range(CHAOS_SEEDS))


def test_checkpoints_survive_seeded_storage_faults(remote, proxies, tmp_path, request):
    # A chief refuses a store that ignores them (Writer.claim), and without them a write between
    # another chief's read and its compare-and-swap goes unseen (docs/storage.md).
    ignored = remote.store("probe").enforces_preconditions()
    assert ignored is None, f"{remote.server.url} does not enforce preconditions: {ignored}"
    began = time.monotonic()
    injected: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    failed: list[World] = []
    run = 0
    for seed in seeds():
        if run and time.monotonic() - began > CHAOS_SECONDS:
            break
        where = f"seed-{seed}"
        world = World(seed, remote.uri(where), proxies, tmp_path / where, remote.store(where))
        world.run()
        for proxy in proxies:
            proxy.schedule = None  # the check goes past them; this stops any straggler's faults too
        world.check()
        if os.environ.get("PML_CHAOS_LOG"):
            with open(os.environ["PML_CHAOS_LOG"], "a") as log:
                log.write("\n".join([f"=== {remote.server.scheme} seed {seed} ===", *world.events, ""]))
        injected += world.injected
        counts += world.counts
        run += 1
        if world.problems:
            failed.append(world)
    name = remote.server.__class__.__name__
    measured(
        request.config,
        f"{name}: {run} seeds in {time.monotonic() - began:.0f}s; "
        f"faults injected: {', '.join(f'{k} {injected[k]}' for k in [*KINDS, 'completion_error'])}; "
        f"{', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}; "
        f"failing seeds: {', '.join(str(w.seed) for w in failed) or 'none'}",
    )
    if failed:
        report = []
        for world in failed[:5]:
            report += [f"--- seed {world.seed} ---", *world.problems, "what happened:", *world.events[-40:]]
        pytest.fail(
            f"{len(failed)} of {run} seeds broke an invariant on {name} (rerun one with PML_CHAOS_SEED=N): "
            f"{', '.join(str(w.seed) for w in failed)}\n" + "\n".join(report),
            pytrace=False,
        )
