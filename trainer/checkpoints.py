"""Checkpoints in a remote model dir: published whole or not at all, by one writer at a time.

A remote `checkpoints/` folder looks like a local one written by `tf.train.CheckpointManager`:
`ckpt-*.data-*`, `ckpt-*.index` and the pointer file `checkpoint`, in TensorFlow's text format
with names relative to the folder. A checkpoint's files go up first, then the pointer, in one
request, so a reader never sees a "latest" whose files are not all there.

Two chiefs can write to one model dir at once: a replaced job's old chief still terminating, a
Job controller's new pod beside one that has only begun to terminate, a pod force-deleted on a
partitioned node, two jobs given the same --model-dir. Unfenced, they undo each other: one prunes
the files the other's pointer names, or writes the pointer back to an older step. So:

- Each chief process is an incarnation, a random id, and names its checkpoints
  `ckpt-<incarnation>-<step>`: two writers' files never mix, and the step is still the last
  `-`-separated part of the name, as TensorFlow and `step_of` read it.
- The pointer is changed by compare-and-swap only (Store.put_if: GCS ifGenerationMatch, S3
  If-Match/If-None-Match), and every change is read back. A comment line in it names the
  incarnation that wrote it; TensorFlow's text-format parser skips comments. A store that takes
  writes whose precondition fails is refused before the first swap, unless the job says it has a
  single writer (--single-writer): then the read-back alone notices a second chief, and not always.
- A chief claims the model dir when it starts, by rewriting the pointer as it is with its own
  writer line. From then on, a writer that finds the pointer changed since its own last write
  has been superseded: it stops (Fenced) without writing again, and its process exits with a
  retryable code (trainer/exits.py), so the newest chief is the one that goes on.
- A writer deletes only files of its own incarnation that its pointer does not list, and the
  checkpoints its own swap took out of the list. Files of other incarnations that no pointer
  lists (a killed writer's upload) go only while the pointer is still the writer's own write
  after the listing: every other live writer has claimed since, or is fenced. A live writer of
  another job is neither: it takes the model dir back (see Writer._still_mine), and so uploads its
  checkpoint again before its pointer names it.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import re
import secrets
import shutil
import socket
from collections.abc import Callable

from pml_trainer import faults
from pml_trainer.log import log
from pml_trainer.storage import Entry, StorageError, StorageUnavailable, Store

FOLDER = "checkpoints"
POINTER = "checkpoint"
POINTER_KEY = f"{FOLDER}/{POINTER}"
# A checkpoint's file: ckpt-[<incarnation>-]<step>.index or .data-<shard>-of-<shards>.
_FILE = re.compile(r"^(ckpt-(?:([0-9a-f]+)-)?(\d+))\.(?:index|data-(\d+)-of-(\d+))$")
_PATHS = re.compile(r'^all_model_checkpoint_paths:\s*"(?:.*/)?([^"/]+)"', re.M)
_LATEST = re.compile(r'^model_checkpoint_path:\s*"(?:.*/)?([^"/]+)"', re.M)
_WRITER = re.compile(r"^# writer: ([0-9a-f]+)(.*)$", re.M)
_JOB = re.compile(r"^# job: (\S+)$", re.M)
_REFUSES = re.compile(r"^# refuses: (\S+)$", re.M)
JOB_ENV = "PML_JOB"  # set by every target: the job a task belongs to, the same across its restarts
SWAP_ATTEMPTS = 5  # a precondition that fails while the pointer reads unchanged: not for ever


class Fenced(StorageError):
    """Another chief has taken over the model dir; this one must not write to it again."""


class Taken(StorageError):
    """The model dir belongs to another job or another run: this job stops for good (exit 2)."""


class CheckpointsMissing(StorageUnavailable):
    """The pointer lists checkpoints, but none has all its files: never a reason to start over."""


def new_incarnation() -> str:
    return secrets.token_hex(4)


def pointer_text(
    names: list[str], writer: str | None = None, job: str | None = None, refuses: list[str] | None = None
) -> str:
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    if writer:
        lines.append(f"# writer: {writer}")
    lines += [f"# job: {job}"] if job else []
    lines += [f"# refuses: {other}" for other in refuses or []]
    return "\n".join(lines) + "\n"


def _comment(pattern: re.Pattern[str], text: bytes | None) -> str | None:
    match = pattern.search(text.decode()) if text else None
    return match.group(1) if match else None


def _refused(text: bytes | None) -> list[str]:
    """The jobs a pointer's writer refuses (its `# refuses:` lines)."""
    return _REFUSES.findall(text.decode()) if text else []


def names_in_pointer(text: str) -> list[str]:
    """The checkpoints a pointer lists, oldest first, the latest last."""
    latest = _LATEST.search(text)
    if latest is None:
        return []
    names = [n for n in _PATHS.findall(text) if n != latest.group(1)]
    return [*names, latest.group(1)]


def writer_of(text: bytes | str | None) -> tuple[str, str] | None:
    """(incarnation, details) of the writer line of a pointer; None for a pointer without one."""
    if text is None:
        return None
    match = _WRITER.search(text.decode() if isinstance(text, bytes) else text)
    return (match.group(1), match.group(2).strip()) if match else None


def step_of(name: str) -> int:
    return int(name.rpartition("-")[2])


def incarnation_of(name: str) -> str:
    """The incarnation in a checkpoint's name; "" for a name from before incarnations (ckpt-<step>)."""
    parts = name.split("-")
    return parts[1] if len(parts) == 3 else ""


def published(store: Store) -> list[str]:
    text = store.get_bytes(POINTER_KEY)
    return names_in_pointer(text.decode()) if text else []


def files_of(local_dir: pathlib.Path, name: str) -> list[pathlib.Path]:
    """A checkpoint's files, data before index: the index is what makes the data readable."""
    return sorted(local_dir.glob(f"{name}.*"), key=lambda p: (p.suffix == ".index", p.name))


def checkpoint_of(file_name: str) -> str | None:
    """The checkpoint a file belongs to (ckpt-...), from its name; None for other files."""
    match = _FILE.match(file_name.rpartition("/")[2])
    return match.group(1) if match else None


def missing_files(names: list[str], name: str) -> list[str]:
    """What checkpoint `name` lacks among the file names `names`: [] when it is complete.

    Complete means its index and every data shard the shard names count (data-K-of-N, K < N).
    """
    shards = [m for m in (_FILE.match(n.rpartition("/")[2]) for n in names) if m and m.group(1) == name]
    missing = [] if any(m.group(4) is None for m in shards) else [f"{name}.index"]
    counts = {int(m.group(5)) for m in shards if m.group(4) is not None}
    if not counts:
        return [*missing, f"{name}.data-*"]
    have = {int(m.group(4)) for m in shards if m.group(4) is not None}
    total = max(counts)
    return missing + [f"{name}.data-{k:05d}-of-{total:05d}" for k in range(total) if k not in have]


def _download_checkpoint(store: Store, entries: list[Entry], name: str, local_dir: pathlib.Path) -> bool:
    """Fetch checkpoint `name`'s files into `local_dir` (skipped if its index is there); False if one vanished."""
    if (local_dir / f"{name}.index").is_file():
        return True
    files = [e for e in entries if checkpoint_of(e.name) == name]
    for entry in sorted(files, key=lambda e: e.name.endswith(".index")):
        if not store.get_file(entry.name, local_dir / entry.name.rpartition("/")[2]):
            return False
    return True


def keep_only(local_dir: pathlib.Path, name: str) -> pathlib.Path:
    """Make `name` the only checkpoint of a local folder, so that a CheckpointManager there starts from it."""
    for path in local_dir.glob("ckpt-*"):
        if not path.name.startswith(f"{name}."):
            remove(path)
    (local_dir / POINTER).write_text(pointer_text([name]))
    return local_dir / name


def remove(path: pathlib.Path) -> None:
    """Remove a checkpoint's file, or the folder `<name>_temp` a save killed midway leaves: TensorFlow
    writes a checkpoint's shards there before it merges them into `<name>.index` and `<name>.data-*`
    (tensorflow/python/checkpoint/functional_saver.py, the "_temp/part" suffix of a sharded save)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _newest_complete(store: Store, text: bytes | None) -> tuple[list[str], list[Entry], str | None]:
    """The names a pointer lists, the folder's files, and the newest listed checkpoint that is complete."""
    names = names_in_pointer(text.decode()) if text else []
    if not names:
        return names, [], None
    entries = store.list(FOLDER)
    present = [e.name for e in entries]
    for name in reversed(names):
        lacking = missing_files(present, name)
        if not lacking:
            return names, entries, name
        log.warning(
            f"checkpoint {name}, listed in {store.location}/{POINTER_KEY}, lacks "
            f"{', '.join(lacking[:3])}; looking at the one before it"
        )
    return names, entries, None


def _incomplete_error(store: Store, names: list[str]) -> CheckpointsMissing:
    return CheckpointsMissing(
        f"{store.location}/{POINTER_KEY} lists {', '.join(names)}, but none of them has all its files; not "
        f"starting over from step 0: put the files back, or delete {POINTER_KEY} to start afresh"
    )


def fetch_latest(store: Store, local_dir: pathlib.Path) -> pathlib.Path | None:
    """Download the newest complete checkpoint the pointer lists into `local_dir`; its path prefix.

    None when there is no pointer: nothing was ever published. A pointer whose checkpoints all lack
    files raises CheckpointsMissing (retryable): starting over would silently drop the run's work.
    Files already there are not fetched again (the evaluator polls), and older checkpoints there
    are removed. The local pointer lists only this checkpoint, so a CheckpointManager on
    `local_dir` starts from it.
    """
    for _ in range(SWAP_ATTEMPTS):
        text = store.get_bytes(POINTER_KEY)
        names, entries, name = _newest_complete(store, text)
        if not names:
            return None
        if name is None:
            if store.get_bytes(POINTER_KEY) == text:
                raise _incomplete_error(store, names)
            continue  # a writer moved on between the two reads: look again
        if _download_checkpoint(store, entries, name, local_dir):
            return keep_only(local_dir, name)
        # pruned while being fetched: a newer one is published
    raise StorageUnavailable(f"{store.location}/{FOLDER}: the checkpoints kept changing while being fetched")


def latest_local(local_dir: pathlib.Path) -> pathlib.Path | None:
    """The latest checkpoint a local `checkpoints/` folder's pointer names, if its files are all there."""
    pointer = local_dir / POINTER
    names = names_in_pointer(pointer.read_text()) if pointer.is_file() else []
    present = [p.name for p in local_dir.glob("ckpt-*")]
    complete = [n for n in names if not missing_files(present, n)]
    return local_dir / complete[-1] if complete else None


def staged_checkpoint(local_dir: pathlib.Path) -> pathlib.Path | None:
    """The newest checkpoint a chief saved in its staging folder, which it may not have published;
    None for none, or for a copy it only downloaded to resume from (ckpt-<incarnation>-<step>):
    that one is published already, and must not go up again under the next chief's name."""
    staged = latest_local(local_dir)
    return None if staged is None or incarnation_of(staged.name) else staged


class Writer:
    """The fence of one chief process (an incarnation) that publishes into a remote model dir."""

    def __init__(
        self,
        store: Store,
        incarnation: str,
        keep: int,
        job: str | None = None,
        interrupted: Callable[[], bool] = lambda: False,
        single_writer: bool = False,
    ):
        """`job`: the job this chief belongs to (JOB_ENV), which its pointer writes name. `interrupted`:
        SIGTERM came, so this job is going and yields the model dir to any other. `single_writer`:
        the user vouches that no other chief writes here, so a store that ignores preconditions is
        only a warning (see claim)."""
        self.store, self.incarnation, self.keep = store, incarnation, keep
        self.job, self.interrupted = job, interrupted
        # The jobs that claimed the model dir while this one wrote it, each named in its pointer writes.
        self.refuses: list[str] = []
        self.single_writer = single_writer
        self._probed = False  # whether the store's preconditions have been tried
        self._refused: str | None = None  # why the store is not to be written, once found
        self.claimed = False
        self._last_written: bytes | None = None  # the pointer as this writer last wrote it (None: absent)
        # Pointers this writer sent without learning whether they took effect: the reply was lost,
        # or the read-back failed. Every one is unique (its writer line counts the writes), so
        # finding one of them in place means it is this writer's own write, not a rival's.
        self._unconfirmed: list[bytes] = []
        self._writes = 0
        # The checkpoint whose files this writer last began to upload: a publish tried again (the
        # uploader's retry, after any error) sends only what is not stored whole yet.
        self._uploading: str | None = None

    # --- the fence ----------------------------------------------------------------------------

    def claim(
        self,
        local_dir: pathlib.Path | None = None,
        staged: pathlib.Path | None = None,
        staged_by: str | None = None,
        staged_run: tuple[str, bytes] | None = None,
    ) -> pathlib.Path | None:
        """Take the model dir over, and return the checkpoint to resume from (None: start afresh).

        With `local_dir`, the newest complete checkpoint the pointer lists is downloaded there,
        unless `staged` (a complete checkpoint left on this machine by incarnation `staged_by`,
        which is not running any more) is newer and `staged_by` wrote the pointer last, or there is
        no pointer and the model dir's run record is `staged_run` (its name and the content staged
        with the checkpoint): then the caller resumes from `staged` and publishes it. A pointer whose checkpoints all lack files
        raises CheckpointsMissing before anything is claimed.
        """
        self._require_preconditions()
        for _ in range(SWAP_ATTEMPTS):
            text, version = self.store.get_versioned(POINTER_KEY)
            names, entries, newest = _newest_complete(self.store, text) if local_dir else ([], [], None)
            last = writer_of(text)
            # Staged work is of this model dir's run only if the pointer is still its writer's, or,
            # with no pointer yet (its first checkpoint never got up), if the run's record there is
            # the one staged with it: never into an emptied model dir, or one another run took.
            shows_run = (last is not None and last[0] == staged_by) or (
                text is None and staged_run is not None and self.store.get_bytes(staged_run[0]) == staged_run[1]
            )
            adopt = staged is not None and shows_run and (newest is None or step_of(staged.name) > step_of(newest))
            if names and newest is None and not adopt:
                if self.store.get_bytes(POINTER_KEY) != text:
                    continue
                raise _incomplete_error(self.store, names)
            listed = names_in_pointer(text.decode()) if text else []
            if self.job and _comment(_JOB, text) == self.job:
                # A job that an earlier chief of this one refused is refused still: it would otherwise
                # take the model dir back at its next write, and refuse this job, which was there first.
                self.refuses += [other for other in _refused(text) if other not in self.refuses]
            if listed:  # the claim: the same list, with this writer's line
                mine = self._text(listed)
                if not self._swap_to(mine, text, version):
                    continue  # someone wrote in between: decide again on what is there now
            else:
                self._last_written = text  # nothing to claim yet: the first publish swaps against this
            self.claimed = True
            self._abort_unfinished_uploads()
            if adopt:
                log.info(
                    f"{staged.name} on this machine is newer than the published checkpoints; resuming from it "
                    "and publishing it"
                )
                return staged
            if newest is None:
                return None
            if _download_checkpoint(self.store, entries, newest, local_dir):
                return keep_only(local_dir, newest)
            raise StorageUnavailable(
                f"{self.store.location}/{FOLDER}: files of {newest} vanished after the model dir was claimed"
            )
        raise StorageUnavailable(f"{self.store.location}/{POINTER_KEY} kept changing while being claimed")

    def _require_preconditions(self) -> None:
        """Refuse a store whose compare-and-swap is a plain write (StorageError, permanent): there two
        chiefs racing within milliseconds can each see its own write succeed, and both go on."""
        if not self._probed:
            why = self.store.enforces_preconditions()  # patient itself: a 5xx is no verdict
            self._probed = True
            if why is None:
                return
            where = self.store.where()
            if self.single_writer:
                log.warning(
                    f"{where} does not enforce conditional writes ({why}); going on as --single-writer says, "
                    "with only a read-back after each write to notice another chief"
                )
                return
            self._refused = (
                f"{where} does not enforce conditional writes ({why}), so two chiefs could overwrite each "
                "other's checkpoints unseen; use a store that does (GCS, AWS S3 since November 2024, MinIO "
                "since September 2025), or pass --single-writer if only one chief ever writes there"
            )
        if self._refused is not None:
            raise StorageError(self._refused)

    def _abort_unfinished_uploads(self) -> None:
        """Abort what killed writers left of multipart uploads: every other writer is fenced now."""
        try:
            aborted = self.store.abort_unfinished_uploads(FOLDER)
        except StorageError as err:  # a policy without s3:ListBucketMultipartUploads: not worth failing for
            log.warning(
                f"could not clean up unfinished uploads ({err}); a bucket lifecycle rule with "
                "AbortIncompleteMultipartUpload does it too"
            )
            return
        if aborted:
            log.info(
                f"aborted {aborted} unfinished upload(s) in {self.store.location}/{FOLDER} left by a killed writer"
            )

    def raise_if_fenced(self) -> None:
        """Raise Fenced if another writer has changed the pointer since this one's last write."""
        if not self.claimed:
            self.claim()
            return
        text, version = self.store.get_versioned(POINTER_KEY)
        self._still_mine(text, version)

    def _still_mine(self, text: bytes | None, version: str | None) -> bool:
        """Return if the pointer (`text` at `version`) is still this writer's; raise Fenced if another
        chief of this job (or of an unnamed one) took over, Taken if another job refused this one.
        True if it was another job's, and this writer has taken it back."""
        for _ in range(SWAP_ATTEMPTS):
            if text == self._last_written:
                return False
            if text is not None and text in self._unconfirmed:
                self._confirmed(text)  # a write of ours that took effect, though we did not hear so
                return False
            rival = _comment(_JOB, text)
            if not (self.job and rival and rival != self.job):
                raise self._fenced(text)
            if self.job in _refused(text):
                raise Taken(
                    f"job {rival} is writing to {self.store.location} and refuses this job ({self.job}), which "
                    f"claimed it while {rival} ran: this job stops for good rather than take the model dir "
                    f"back and forth with it; use another --model-dir, or stop job {rival} first"
                )
            if self._last_written is None:
                # This chief found the model dir empty, so it claimed nothing, and has written nothing
                # since: the other job was there first. Taking it "back" would list only this one's
                # checkpoints (the other's later steps taken for another run's) and delete the other's.
                # Its restart claims the model dir as a newcomer: the other job refuses it if it is
                # still writing there, or it resumes from the other's checkpoints if that one is going.
                raise Fenced(
                    f"job {rival} wrote {self.store.location}/{POINTER_KEY} first: this chief ({self.incarnation}, "
                    f"job {self.job}) found the model dir empty when it started and has written nothing there; "
                    f"exiting for a restart, which resumes from job {rival}'s checkpoints, or stops for good if "
                    f"job {rival} is still writing there"
                )
            if self.interrupted():
                raise self._fenced(text)  # this job is going: the other one may have the model dir
            # Another job claimed the model dir while this one was writing it, live: two jobs were given
            # one --model-dir. Each would restart and fence the other for ever (177 is retryable), so
            # the one that was there first takes it back and names the newcomer, which stops for good
            # at its next write. A job replacing one that is being stopped gets it: that one had SIGTERM.
            if rival not in self.refuses:
                log.warning(
                    f"job {rival} claimed {self.store.location} while this job ({self.job}) was writing there; "
                    f"taking it back: job {rival} stops when it next writes"
                )
                self.refuses.append(rival)
            listed = names_in_pointer(text.decode()) if text else []
            if listed and self._swap_to(self._text(listed), text, version):
                self._uploading = None  # the other job may have pruned what this one uploaded: all again
                return True
            text, version = self.store.get_versioned(POINTER_KEY)
        raise StorageUnavailable(f"{self.store.location}/{POINTER_KEY} kept changing while being taken back")

    def _fenced(self, text: bytes | None) -> Fenced:
        if text is None:
            why = f"{POINTER_KEY} was deleted (another run started afresh there with --restart?)"
        else:
            names, writer = names_in_pointer(text.decode()), writer_of(text)
            latest = f"{names[-1]} (step {step_of(names[-1])})" if names else "no checkpoint"
            who = f"chief {writer[0]} ({writer[1]})" if writer else "a chief without incarnations (an older trainer)"
            why = f"{POINTER_KEY} was rewritten by {who}; it names {latest}"
        return Fenced(
            f"another chief took over {self.store.location}: {why}. This chief ({self.incarnation}) "
            "stops without writing there again, so that the two do not delete each other's "
            "checkpoints; two chiefs write to one model dir when a replaced job's old pod is still "
            "terminating, or two jobs were given the same --model-dir"
        )

    def _text(self, names: list[str]) -> bytes:
        """The pointer listing `names`, as this writer writes it: a line that makes the write unique,
        its job, and the jobs it refuses."""
        self._writes += 1
        at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{self.incarnation} on {socket.gethostname()}, pid {os.getpid()}, write {self._writes}, {at}"
        return pointer_text(names, line, self.job, self.refuses).encode()

    def _swap_to(self, new: bytes, old: bytes | None, version: str | None) -> bool:
        """Write `new` over the pointer `old` at `version`; True if it is there now, as this writer's write.

        A write can take effect on the server while the caller sees an error: the reply was lost
        (S3 after urllib3's retries, GCS on a timeout or a reset). So after an error the pointer is
        read: our own text means it took effect; still `old` means it did not, and the write is sent
        again while the service is unavailable (Store.patiently); anything else is a rival's
        write, which the caller looks at. A retried request that took effect the first time fails
        its precondition against itself; the read-back finds it ours all the same.
        """
        self._unconfirmed.append(new)

        def attempt() -> bool:
            try:
                return self.store.put_if(new, POINTER_KEY, version)
            except StorageUnavailable:
                now = self.store.get_bytes(POINTER_KEY)
                if now == new or now != old:
                    return now == new
                raise

        self.store.patiently(attempt)
        # Read back: a service that ignores preconditions lets a racing writer's swap overwrite
        # ours without either seeing a failure (see Store.enforces_preconditions).
        if self.store.get_bytes(POINTER_KEY) != new:
            return False
        self._confirmed(new)
        return True

    def _confirmed(self, text: bytes) -> None:
        self._last_written = text
        self._unconfirmed.clear()  # older sends can no longer take effect: each was at an older version

    # --- publishing ---------------------------------------------------------------------------

    def publish_record(self, source: pathlib.Path, name: str, other_run: Callable[[bytes], list[str]]) -> None:
        """Upload the run's record `name` (run.json) unless the model dir holds another run's.

        The record is created only where there is none, and replaced only at the version read
        (for a new code digest): two jobs with other settings that start on an empty model dir race
        to create it, and the one that loses stops here, before its first checkpoint, instead of
        leaving its settings beside the other's checkpoints for its restart to resume from.
        `other_run(found)` says how a record found there differs from this run's.
        """
        self.raise_if_fenced()
        data = source.read_bytes()
        for _ in range(SWAP_ATTEMPTS):
            there, version = self.store.get_versioned(name)
            if there == data:
                return
            if there is not None and (changed := other_run(there)):
                raise Taken(
                    f"{self.store.location}/{name} was written by another run ({'; '.join(changed)}) since this "
                    "job started: two jobs with other settings were given this --model-dir; use another one"
                )
            # A lost reply is sent again and fails its precondition against itself: the next look finds it.
            if self.store.patiently(lambda: self.store.put_if(data, name, version)):  # noqa: B023 (used at once)
                return
        raise StorageUnavailable(f"{self.store.location}/{name} kept changing while being written")

    def publish(self, local_dir: pathlib.Path, local_name: str) -> list[str] | None:
        """Upload local checkpoint `local_name` (ckpt-<step>) as this incarnation's, make it the
        latest, and prune to `keep`; the pointer's new list. None if it is gone locally (the
        manager deleted it as superseded). Raises Fenced if another writer took over.
        """
        files = files_of(local_dir, local_name)
        if not any(p.suffix == ".index" for p in files):
            return None
        self.raise_if_fenced()  # a superseded writer uploads nothing more
        name = f"ckpt-{self.incarnation}-{step_of(local_name)}"
        listed = names_in_pointer(self._last_written.decode()) if self._last_written else []
        if listed and listed[-1] == name:  # an earlier try took effect, and its reply was lost
            self._prune(listed, [])
            return listed
        self._upload(files, local_name, name, every=self._uploading != name)
        faults.pause_before_publish(step_of(name))
        for _ in range(SWAP_ATTEMPTS):
            text, version = self.store.get_versioned(POINTER_KEY)
            if self._still_mine(text, version):
                # Taken back from another job, which may have pruned this upload meanwhile as a killed
                # writer's leftovers (no pointer listed it, and the pointer was that job's own write):
                # it goes up again before the pointer names it. A new generation, on GCS, also
                # outlasts a delete of that job's that is still on its way (delete_if at the old one).
                self._upload(files, local_name, name, every=True)
                continue
            before = names_in_pointer(text.decode()) if text else []
            # The new one is the latest. A listed checkpoint at a later step is of another run than
            # this one, which started afresh (--restart): it goes.
            older = sorted((n for n in before if step_of(n) < step_of(name)), key=step_of)
            names = (older[-(self.keep - 1) :] if self.keep > 1 else []) + [name]
            new = self._text(names)
            if self._swap_to(new, text, version):
                self._prune(names, [n for n in before if n not in names])
                return names
        raise StorageUnavailable(
            f"{self.store.location}/{POINTER_KEY}: the write kept failing its precondition "
            "although the pointer reads unchanged"
        )

    def _upload(self, files: list[pathlib.Path], local_name: str, name: str, every: bool) -> None:
        """Upload local checkpoint `local_name`'s files as checkpoint `name`, and check they landed.

        Not `every`: this is the same checkpoint's upload tried again, and a file an earlier try
        stored whole (by the listing's size) is not sent again: its name is this incarnation's and
        this step's, so only that try can have stored it.
        """
        self._uploading = name
        stored = {} if every else {e.name.rpartition("/")[2]: e.size for e in self.store.list(FOLDER)}
        for path in files:
            target = f"{name}{path.name[len(local_name) :]}"
            if stored.get(target) != path.stat().st_size:
                self.store.put_file(path, f"{FOLDER}/{target}")
        self._check_landed(files, local_name, name)

    def _check_landed(self, files: list[pathlib.Path], local_name: str, name: str) -> None:
        """Raise StorageUnavailable unless every file of checkpoint `name` is stored whole.

        An upload can be reported done and not be: S3's CompleteMultipartUpload may answer 200 with
        an error in its body (docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html),
        which botocore turns into an error (botocore/handlers.py, _handle_200_error) and minio-py
        7.2 does not (minio/api.py, _complete_multipart_upload: the <Error> is parsed into empty
        fields). A pointer naming a checkpoint without its data would lose it, and, with one kept,
        every checkpoint. So the listing is compared with the local files before the pointer moves.
        """
        stored = {e.name.rpartition("/")[2]: e.size for e in self.store.list(FOLDER)}
        short = [
            f"{name}{p.name[len(local_name) :]}"
            for p in files
            if stored.get(f"{name}{p.name[len(local_name) :]}") != p.stat().st_size
        ]
        if short:
            raise StorageUnavailable(
                f"{self.store.location}/{FOLDER}: {', '.join(short)} not stored whole although its upload "
                "was reported done; uploading again before the pointer moves"
            )

    def _prune(self, names: list[str], dropped: list[str]) -> None:
        """Delete this incarnation's unlisted files, the checkpoints this swap dropped, and, while
        no one else has written the pointer, files of other incarnations that no pointer lists.

        A failed delete is only a warning: the files go at the next publish, which lists again,
        and the checkpoint just published is not uploaded a second time.
        """
        try:
            entries = self.store.list(FOLDER)
            nobody_else = self.store.get_bytes(POINTER_KEY) == self._last_written
            for entry in entries:
                name = checkpoint_of(entry.name)
                if name is None or name in names:
                    continue
                prunable = incarnation_of(name) == self.incarnation or name in dropped or nobody_else
                if prunable and not self.store.delete_if(entry.name, entry.version):
                    log.info(f"{entry.name} changed since it was listed; left for the next publish")
        except StorageUnavailable as err:
            log.warning(f"pruning old checkpoints failed ({err}); trying again at the next publish")
