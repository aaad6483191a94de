"""Issue 26, item 3: a count of restarts that holds on a long, busy job, from the model dir's
record of its chiefs (pml_trainer.chiefs), and `pmlctl status` showing it on the fake cluster."""

from __future__ import annotations

import json

import pytest
from storage_servers import remote, server  # noqa: F401 (fixtures)
from test_k8s import pmlctl, submit
from test_k8s_rules import kube  # noqa: F401 (the fixture)

from pml_trainer import chiefs, exits

pytest.importorskip("kubernetes")


def records_written(ends: list[int | None], submission: str, monkeypatch) -> dict[str, bytes]:
    """One record per chief, ended with each code of `ends` (None: killed with no word)."""
    files: dict[str, bytes] = {}
    monkeypatch.setenv(chiefs.SUBMISSION_ENV, submission)
    monkeypatch.setenv("PML_JOB", "study")
    for code in ends:
        before = len(files)
        record = chiefs.Record(lambda key, data: files.__setitem__(key, data))
        record.resumed_from(10 * before)
        if code is not None:
            record.ended(code)
    return files


def test_each_chief_says_how_it_ended_and_the_last_is_not_a_restart(monkeypatch):
    files = records_written([exits.PREEMPTED, None, exits.PEER_LOST, exits.PREEMPTED, None], "s1", monkeypatch)
    assert len(files) == 5 and all(key.startswith("chiefs/") for key in files)  # one file each, never shared
    records = chiefs.parse({**files, "chiefs/garbage.json": b"{not json"})
    assert [r.get("exit_code") for r in records] == [143, None, 175, 143, None]
    assert [r["resumed_from_step"] for r in records] == [0, 10, 20, 30, 40]
    assert all(r["submission"] == "s1" and r["job"] == "study" for r in records)
    counts = chiefs.summary(records)
    assert counts == {"chiefs": 5, "restarts": 4, "ended": {"preempted": 2, "vanished": 1, "lost a peer": 1}}
    assert chiefs.describe(counts) == (
        "the model dir records 5 chief(s) of this submission, 4 restart(s): 1 lost a peer, 2 preempted, 1 vanished"
    )


def test_only_this_submissions_chiefs_count(monkeypatch):
    earlier = records_written([exits.OK], "s0", monkeypatch)
    now = records_written([exits.FAILED, None], "s1", monkeypatch)
    records = chiefs.parse({**earlier, **now})
    assert chiefs.summary(records, "s1") == {"chiefs": 2, "restarts": 1, "ended": {"failed": 1}}
    assert chiefs.summary(records, "s2") == {"chiefs": 0, "restarts": 0, "ended": {}}


def test_status_counts_restarts_from_the_model_dir_that_events_lost(kube, remote, monkeypatch):
    """The operator's events about a busy TFJob are dropped past client-go's burst
    (tools/record/events_cache.go); the model dir keeps every chief."""
    assert submit("--model-dir", remote.uri()).exit_code == 0
    submission = kube.objects("tfjobs")["study"]["metadata"]["labels"]["parallel-ml/submission"]
    store = remote.store()
    files = {
        **records_written([exits.OK], "an-earlier-one", monkeypatch),
        **records_written([exits.PREEMPTED, exits.PREEMPTED, None, None], submission, monkeypatch),
    }
    for key, data in files.items():
        store.put_bytes(data, key)
    result = pmlctl("status", "study", "-t", "k8s", "-o", "json")
    doc = json.loads(result.stdout)
    assert doc["details"]["chief_history"] == {"chiefs": 4, "restarts": 3, "ended": {"preempted": 2, "vanished": 1}}
    assert "the model dir records 4 chief(s) of this submission, 3 restart(s): 2 preempted, 1 vanished" in doc["notes"]


def test_chiefs_that_keep_losing_a_peer_without_progress_stop_being_ignored(monkeypatch, tmp_path):
    """Native mode ignores exit 175; a peer that never answers would restart the chief for ever,
    uncounted (second reading of issue 26). The fourth chief in a row at the same step exits 174."""
    from pml_trainer.model_dir import ModelDir

    monkeypatch.setenv(chiefs.SUBMISSION_ENV, "s1")
    model_dir = tmp_path / "model"
    for _ in range(chiefs.STALL_AFTER):
        chief = ModelDir(str(model_dir), None, "chief-0", keep=2, writer=True)
        assert chief.latest_checkpoint() is None  # resumed from step 0, as each before it
        chief.ended(exits.PEER_LOST)
    stalled = ModelDir(str(model_dir), None, "chief-0", keep=2, writer=True)
    with pytest.raises(chiefs.Stalled, match="lost a peer and resumed from step 0"):
        stalled.latest_checkpoint()
    # Progress, or another cause in between, and the count starts again.
    records = stalled.chief_records()
    assert len(records) == chiefs.STALL_AFTER + 1
    chiefs.check_progress([*records[:-2], {**records[-2], "resumed_from_step": 7}, records[-1]], records[-1]["_key"], 0)
