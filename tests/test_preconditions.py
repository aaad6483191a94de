"""Stores that ignore write preconditions (issue 25): found by a probe, refused when a chief claims a
model dir, or only warned about with --single-writer.

"Ignores" is served two ways: the bare GCS emulator, and a proxy that takes the preconditions off
every request in front of the servers that keep them (storage_servers.PreconditionDroppingProxy).
"""

from __future__ import annotations

import re

import pytest
from conftest import logged_by, said
from storage_servers import GCSServer, PreconditionDroppingProxy, Remote, a_bucket, in_front, remote, server  # noqa: F401 (fixtures)
from test_fencing import assert_consistent, stage
from test_storage import trainer

from pml_trainer import checkpoints, storage
from pml_trainer.checkpoints import Writer

REFUSED = (
    r"does not enforce conditional writes \(it took a create-only write \((ifGenerationMatch=0|If-None-Match: \*)\) "
    r"over an existing file\), so two chiefs could overwrite each other's checkpoints unseen; use a store that "
    r"does \(GCS, AWS S3 since November 2024, MinIO since September 2025\), or pass --single-writer if only one "
    r"chief ever writes there$"
)


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    server = GCSServer(tmp_path_factory.mktemp("bare-gcs"), enforce=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bare(bare_server, monkeypatch) -> Remote:
    """A bucket on the GCS emulator as it is."""
    return a_bucket(bare_server, monkeypatch)


@pytest.fixture
def dropping(remote, monkeypatch):
    """`remote`'s server behind a proxy that drops every precondition."""
    with in_front(PreconditionDroppingProxy(remote.server), monkeypatch) as proxy:
        yield proxy


def leftovers(store) -> list[str]:
    return [e.name for e in store.list() if e.name.startswith(storage.PRECONDITION_PROBE)]


# --- the probe -------------------------------------------------------------------------------------


def test_the_probe_passes_servers_that_keep_preconditions_and_cleans_up(remote, tmp_path):
    store = remote.store()
    assert store.enforces_preconditions() is None
    assert leftovers(store) == []
    assert storage.open_store(str(tmp_path / "local")).enforces_preconditions() is None


def test_the_probe_finds_a_server_that_ignores_preconditions(bare):
    store = bare.store()
    assert store.enforces_preconditions() == ("it took a create-only write (ifGenerationMatch=0) over an existing file")
    assert leftovers(store) == []


def test_the_probe_finds_a_proxy_that_drops_preconditions(remote, dropping):
    store = remote.store()
    create_only = "ifGenerationMatch=0" if remote.server.scheme == "gs" else "If-None-Match: *"
    assert store.enforces_preconditions() == f"it took a create-only write ({create_only}) over an existing file"
    assert leftovers(store) == []


@pytest.mark.parametrize(
    ("takes", "reason"),
    [
        (lambda version, exists: version is None, "it took a create-only write ({create_only}) over an existing file"),
        (
            lambda version, exists: version is not None and exists,
            "it took a write at a version the file does not have ({at})",
        ),
        # MinIO before minio/minio#21550
        (
            lambda version, exists: version is not None and not exists,
            "it took a write at a version ({at}) to a file that does not exist",
        ),
    ],
    ids=["create-only", "stale-version", "missing-file"],
)
def test_the_probe_finds_each_precondition_ignored(remote, monkeypatch, takes, reason):
    store = remote.store()
    keeps = store.put_if

    def put_if(data: bytes, name: str, version: str | None) -> bool:
        if takes(version, store.get_bytes(name) is not None):
            store.put_bytes(data, name)
            return True
        return keeps(data, name, version)

    monkeypatch.setattr(store, "put_if", put_if)
    assert store.enforces_preconditions() == reason.format(create_only=store.CREATE_ONLY, at=store.AT_VERSION)
    assert leftovers(store) == []


def test_a_write_at_a_version_to_a_missing_file_fails_its_precondition(remote):
    """AWS and moto answer 404 NoSuchKey there, not 412: it once surfaced as an outage."""
    store = remote.store()
    assert store.put_if(b"x", "missing", store.NEVER_A_VERSION) is False
    assert store.get_bytes("missing") is None


def test_an_outage_during_the_probe_is_no_verdict(remote, tmp_path, monkeypatch):
    """A 503 is StorageUnavailable (retryable), never "does not enforce"; the claim asks again."""
    from storage_servers import FaultProxy

    proxy = FaultProxy(remote.server)
    try:
        for key, value in proxy.env().items():
            monkeypatch.setenv(key, value)
        store = remote.store()
        store.patience = 1.0  # a 503 is asked again for this long (as a brief one is, in the test after)
        # S3 names the file in the path; a GCS upload names it in the body.
        fault = proxy.fail("PUT" if remote.server.scheme != "gs" else "POST", r"pml-precondition-check|^/upload/")
        writer = Writer(store, "0000000a", 3)
        with pytest.raises(storage.StorageUnavailable):
            writer.claim(tmp_path / "w")
        assert fault.hits and not writer.claimed
        proxy.heal()
        assert writer.claim(tmp_path / "w") is None and writer.claimed
    finally:
        proxy.close()


# --- the claim -------------------------------------------------------------------------------------


def test_a_chief_refuses_a_store_that_ignores_preconditions(bare, tmp_path):
    store = bare.store()
    writer = Writer(store, "0000000a", 3)
    with pytest.raises(storage.StorageError, match=f"^{bare.uri()} at {bare.server.url} {REFUSED}") as refused:
        writer.claim(tmp_path / "w")
    assert not isinstance(refused.value, storage.StorageUnavailable)  # permanent: a restart changes nothing
    assert "\n" not in str(refused.value)
    assert not writer.claimed and store.get_bytes(checkpoints.POINTER_KEY) is None
    with pytest.raises(storage.StorageError, match=REFUSED):  # nor does it publish
        writer.publish(tmp_path / "w", stage(tmp_path / "w", 10))
    assert store.list("checkpoints") == []


def test_a_chief_refuses_a_store_behind_a_proxy_that_drops_preconditions(remote, dropping, tmp_path):
    with pytest.raises(storage.StorageError, match=REFUSED):
        Writer(remote.store(), "0000000a", 3).claim(tmp_path / "w")


def test_single_writer_mode_goes_on_with_a_warning(bare, tmp_path, monkeypatch):
    said_by_checkpoints = logged_by(checkpoints, monkeypatch)
    store = bare.store()
    writer = Writer(store, "0000000a", 3, single_writer=True)
    assert writer.claim(tmp_path / "w") is None
    writer.publish(tmp_path / "w", stage(tmp_path / "w", 10))
    writer.publish(tmp_path / "w", stage(tmp_path / "w", 20))
    assert assert_consistent(store) == ["ckpt-0000000a-10", "ckpt-0000000a-20"]
    assert said_by_checkpoints == [
        f"{bare.uri()} at {bare.server.url} does not enforce conditional writes (it took a create-only write "
        "(ifGenerationMatch=0) over an existing file); going on as --single-writer says, with only a "
        "read-back after each write to notice another chief"
    ]


def test_the_probe_runs_once_per_writer_and_not_at_all_when_enforced(remote, tmp_path, monkeypatch):
    store = remote.store()
    probes = []
    real = store.enforces_preconditions
    monkeypatch.setattr(store, "enforces_preconditions", lambda: probes.append(1) or real())
    said_by_checkpoints = logged_by(checkpoints, monkeypatch)
    writer = Writer(store, "0000000a", 3)
    for step in (10, 20):
        writer.publish(tmp_path / "w", stage(tmp_path / "w", step))
    assert writer.claim(tmp_path / "again").name == "ckpt-0000000a-20"
    assert len(probes) == 1
    assert said_by_checkpoints == []  # quiet when enforced


# --- the trainer -----------------------------------------------------------------------------------

TINY = ["--epochs", "1", "--train-examples", "400", "--batch-size", "100", "--hidden-layers", "1", "--neurons", "8"]


@pytest.mark.slow
def test_the_trainer_refuses_a_store_that_ignores_preconditions_as_bad_setup(bare, tmp_path):
    env = {**bare.server.env(), "PML_STAGING_DIR": str(tmp_path / "staging")}
    result = trainer("--model-dir", bare.uri(), *TINY, env=env)
    assert result.returncode == 3, result.stderr  # permanent (trainer/exits.py): not restarted
    errors = [said(line) for line in result.stderr.splitlines() if said(line).startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {bare.uri()} at {bare.server.url} does not enforce conditional writes")
    assert bare.store().get_bytes(checkpoints.POINTER_KEY) is None

    result = trainer("--model-dir", bare.uri(), *TINY, "--single-writer", env=env)
    assert result.returncode == 0, result.stderr
    assert "does not enforce conditional writes" in result.stderr and "--single-writer says" in result.stderr
    assert checkpoints.published(bare.store())


@pytest.mark.parametrize("refused", ["at-its-version", "create-only"])
def test_a_store_that_refuses_the_writes_it_should_take_is_refused_at_once(remote, tmp_path, monkeypatch, refused):
    """A store whose conditional writes never match (an ETag compared with quotes where the client sends
    it without, or the other way round) passed the probe, which only checked that wrong preconditions
    are refused: every claim then failed its swap five times, and the chief exited 176 ("kept changing
    while being claimed") and restarted for ever; an empty model dir's first publish was retried for ever."""
    store = remote.store()
    Writer(store, "0000000a", 3).publish(tmp_path / "w", stage(tmp_path / "w", 10))
    keeps = store.put_if
    if refused == "at-its-version":
        monkeypatch.setattr(store, "put_if", lambda data, name, version: version is None and keeps(data, name, version))
        what = rf"a write at the file's own version \({re.escape(store.AT_VERSION)} \S+\)"
    else:
        monkeypatch.setattr(
            store, "put_if", lambda data, name, version: version is not None and keeps(data, name, version)
        )
        what = rf"a create-only write \({re.escape(store.CREATE_ONLY)}\) of a new file"
    for writer in (Writer(store, "0000000b", 3), Writer(store, "0000000c", 3, single_writer=True)):
        with pytest.raises(storage.StorageError, match=rf"refused {what}, which it should take") as err:
            writer.claim(tmp_path / writer.incarnation)
        assert not isinstance(err.value, storage.StorageUnavailable)
    assert checkpoints.writer_of(store.get_bytes(checkpoints.POINTER_KEY))[0] == "0000000a"
    assert leftovers(store) == []
