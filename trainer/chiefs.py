"""The model dir's record of its chiefs: one file per chief process, `chiefs/<start>-<id>.json`,
written when the chief starts and again when it ends, with how it ended.

A count of restarts that holds on a long, busy job (issue 26, item 3). Kubernetes' own records do
not: the operator counts a TFJob's restarts from events, which client-go's EventCorrelator drops
and folds on a busy object (tools/record/events_cache.go: a burst of 25, then 1 per 300 s), and a
native Job's status.failed leaves out the pods its podFailurePolicy ignores, preemptions included.
The chief's own record is in the model dir, which outlives the pods, the Job and its TTL.

One file per chief, never a shared one appended to: two chiefs that overlap (an old pod and its
replacement) each write their own, and nothing is read back and rewritten. A chief killed with no
time to say so (SIGKILL, the OOM killer, a node gone) leaves a record without an end: that too is
counted, as a chief that vanished.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

from pml_trainer import exits
from pml_trainer.checkpoints import JOB_ENV

FOLDER = "chiefs"
SUBMISSION_ENV = "PML_SUBMISSION"  # set by the Kubernetes target: the submission a task belongs to

# How a chief ended, by its exit code; a record without one vanished.
FINISHED, PREEMPTED, PEER_LOST, FENCED, FAILED, VANISHED = (
    "finished",
    "preempted",
    "lost a peer",
    "fenced",
    "failed",
    "vanished",
)


def how(code: int) -> str:
    if code == exits.OK:
        return FINISHED
    if code == exits.PREEMPTED:
        return PREEMPTED
    if code == exits.PEER_LOST:
        return PEER_LOST
    if code == exits.FENCED:
        return FENCED
    return FAILED


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Record:
    """This chief's record, made when it starts. `write(relative, data)` puts it in the model dir
    (ModelDir.put, unfenced: the key is this chief's alone)."""

    def __init__(self, write: Callable[[str, bytes], None]):
        self._write = write
        started = _now()
        self.key = f"{FOLDER}/{started.replace(':', '')}-{secrets.token_hex(4)}.json"
        self.doc: dict[str, Any] = {
            "started": started,
            "host": socket.gethostname(),  # the pod's name on Kubernetes
            "job": os.environ.get(JOB_ENV, ""),
            "submission": os.environ.get(SUBMISSION_ENV, ""),
        }
        self._save()

    def resumed_from(self, step: int) -> None:
        self.doc["resumed_from_step"] = step
        self._save()

    def ended(self, code: int) -> None:
        self.doc.update(ended=_now(), exit_code=code, how=how(code))
        self._save()

    def _save(self) -> None:
        self._write(self.key, json.dumps(self.doc, sort_keys=True).encode() + b"\n")


# Native mode's podFailurePolicy ignores exit 175 (a task that lost a peer), as the peer's own Job
# judges the cause. A peer that never fails and never answers (never scheduled, already finished,
# cut off by the network) would then restart the chief for ever, uncounted: after this many chiefs
# in a row lost a peer without a step of progress, the next one exits STALLED, which counts.
STALL_AFTER = 3


class Stalled(Exception):
    """The chiefs before this one lost a peer again and again without progress (exits.STALLED)."""


def check_progress(records: list[dict[str, Any]], key: str, step: int) -> None:
    """Raise Stalled if the STALL_AFTER chiefs of this submission before the one at `key` all
    lost a peer and resumed from `step`, as this one does."""
    doc = next((r for r in records if r.get("_key") == key), None)
    submission = doc.get("submission", "") if doc else ""
    before = [r for r in records if r.get("_key", "") < key and r.get("submission", "") == submission]
    last = before[-STALL_AFTER:]
    if len(last) == STALL_AFTER and all(r.get("how") == PEER_LOST and r.get("resumed_from_step") == step for r in last):
        raise Stalled(
            f"the last {STALL_AFTER} chiefs lost a peer and resumed from step {step} each, without a step "
            "of progress: a task that never answers (unscheduled, finished, cut off)? Exiting with a code "
            "that counts toward the job's backoff limit"
        )


def parse(files: dict[str, bytes]) -> list[dict[str, Any]]:
    """The records among `files` (key: content), oldest first; unreadable ones are left out."""
    records = []
    for key in sorted(files):
        try:
            doc = json.loads(files[key])
        except ValueError:
            continue
        if isinstance(doc, dict) and "started" in doc:
            records.append({**doc, "_key": key})
    return records


def summary(records: list[dict[str, Any]], submission: str = "") -> dict[str, Any]:
    """How many chiefs one submission (all of them, without one) had, and how each that is not the
    last ended: the restarts, by cause."""
    mine = [r for r in records if not submission or r.get("submission") == submission]
    ended: dict[str, int] = {}
    for record in mine[:-1]:
        cause = record.get("how") or VANISHED
        ended[cause] = ended.get(cause, 0) + 1
    return {"chiefs": len(mine), "restarts": max(len(mine) - 1, 0), "ended": ended}


def describe(counts: dict[str, Any]) -> str:
    """One line for `pmlctl status`."""
    causes = ", ".join(f"{n} {cause}" for cause, n in sorted(counts["ended"].items()))
    return f"the model dir records {counts['chiefs']} chief(s) of this submission, {counts['restarts']} restart(s)" + (
        f": {causes}" if causes else ""
    )
