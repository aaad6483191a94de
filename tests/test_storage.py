"""The storage layer against real servers on 127.0.0.1: files, checkpoints, uploads, datasets, errors."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, pmlctl, said
from storage_servers import GCSServer, S3Server, remote, server  # noqa: F401 (fixtures)

from pml_trainer import checkpoints, data_cache, storage
from pml_trainer.storage.s3 import DEFAULT_S3_ENDPOINT, s3_endpoint
from pml_trainer.uploader import Uploader


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_files_round_trip_including_empty_and_large_ones(remote, tmp_path):
    store = remote.store("run")
    big = os.urandom(3 * 1024 * 1024 + 17)  # more than one download chunk
    store.put_file(write(tmp_path / "big", big), "a/big.bin")
    store.put_file(write(tmp_path / "empty", b""), "a/empty")
    store.put_bytes(b"{}", "top.json")
    assert [(e.name, e.size) for e in store.list()] == [("a/big.bin", len(big)), ("a/empty", 0), ("top.json", 2)]
    assert [e.name for e in store.list("a")] == ["a/big.bin", "a/empty"]
    assert store.get_file("a/big.bin", tmp_path / "got" / "big") and (tmp_path / "got" / "big").read_bytes() == big
    assert store.get_file("a/empty", tmp_path / "got" / "empty") and (tmp_path / "got" / "empty").read_bytes() == b""
    assert store.get_bytes("top.json") == b"{}"
    assert store.get_bytes("missing") is None and not store.get_file("missing", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    store.delete("top.json")
    store.delete("top.json")  # already gone: not an error
    assert [e.name for e in store.list()] == ["a/big.bin", "a/empty"]
    assert remote.store("other").list() == []  # a sibling prefix sees none of it


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://", "no bucket; write s3://BUCKET/PATH"),
        ("gs:///path", "no bucket; write gs://BUCKET/PATH"),
        ("gcs://bucket/x", "unknown scheme gcs://"),
        ("s3://My_Bucket/x", "'My_Bucket' is not a bucket name"),
        ("gs://bucket/a//b", "empty, '.' or '..' part"),
        ("s3://bucket/a/../b", "empty, '.' or '..' part"),
    ],
)
def test_bad_locations_are_refused_in_one_line(uri, message):
    with pytest.raises(storage.StorageError, match=message.replace("(", r"\(").replace(".", r"\.")):
        storage.parse(uri)


def test_locations_parse_into_bucket_and_prefix():
    assert storage.parse("s3://models/runs/a/") == storage.Location("s3", "models", "runs/a")
    assert str(storage.parse("gs://models")) == "gs://models"
    assert storage.parse("runs/a").remote is False
    assert storage.absolute("s3://models/a") == "s3://models/a"
    assert storage.absolute("runs/a") == str(pathlib.Path("runs/a").resolve())


def test_missing_bucket_fails_in_one_line(remote):
    with pytest.raises(storage.StorageError, match="no such bucket; create it or fix the location"):
        storage.open_store(remote.server.uri("no-such-bucket", "x")).check_writable()


def test_stopped_server_is_unavailable_not_wrong(remote):
    store = remote.store()
    remote.server.stop()
    with pytest.raises(storage.StorageUnavailable, match=r"cannot write to \S+.* \(connection refused\)$"):
        store.put_bytes(b"x", "x")
    remote.server.start()
    store.put_bytes(b"x", "x")


def test_rejected_s3_credentials_fail_in_one_line(tmp_path, monkeypatch):
    checking = S3Server(tmp_path / "s3", check_credentials=True)
    checking.start()
    try:
        for key, value in checking.env().items():
            monkeypatch.setenv(key, value)
        with pytest.raises(
            storage.StorageError, match="access denied \\(InvalidAccessKeyId\\); check AWS_ACCESS_KEY_ID"
        ):
            storage.open_store("s3://models/x").check_writable()
        result = trainer("--model-dir", "s3://models/x")
        assert result.returncode == 3
        assert [said(line) for line in result.stderr.strip().splitlines()] == [
            f"error: --model-dir s3://models at {checking.url}: access denied (InvalidAccessKeyId); "
            "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's policy"
        ]
    finally:
        checking.stop()


def test_missing_google_credentials_fail_in_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    with pytest.raises(storage.StorageError, match=r"no usable Google credentials .* GOOGLE_APPLICATION_CREDENTIALS"):
        storage.open_store("gs://models/x")


def test_s3_endpoint_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:9000")
    assert s3_endpoint("https://from-flag:9000") == "https://from-flag:9000"
    assert s3_endpoint(None) == "http://from-env:9000"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert s3_endpoint(None) == DEFAULT_S3_ENDPOINT
    with pytest.raises(storage.StorageError, match="write it as http://HOST:PORT"):
        s3_endpoint("minio:9000")


def trainer(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pml_trainer", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_trainer_refuses_a_missing_bucket_before_training(remote):
    started = time.monotonic()
    result = trainer("--model-dir", remote.server.uri("no-such-bucket", "run"))
    assert result.returncode == 3
    assert [said(line) for line in result.stderr.strip().splitlines()] == [
        f"error: --model-dir {remote.server.scheme}://no-such-bucket"
        f"{' at ' + remote.server.url if remote.server.scheme == 's3' else ''}: no such bucket; "
        "create it or fix the location"
    ]
    assert time.monotonic() - started < 30  # before TensorFlow is even imported


def test_trainer_refuses_a_malformed_location_as_bad_input():
    result = trainer("--model-dir", "s3://", "--s3-endpoint", "http://127.0.0.1:1")
    assert result.returncode == 2
    assert (
        said(result.stderr.strip()).startswith("error: --model-dir: s3://: no bucket")
        and result.stderr.count("\n") == 1
    )


def stage(folder: pathlib.Path, step: int) -> str:
    """A checkpoint's files as TensorFlow's manager leaves them in a staging folder: ckpt-<step>.*"""
    write(folder / f"ckpt-{step}.data-00000-of-00001", f"data {step}".encode())
    write(folder / f"ckpt-{step}.index", f"index {step}".encode())
    return f"ckpt-{step}"


def publish_steps(
    store, folder: pathlib.Path, steps: list[int], keep: int, writer: checkpoints.Writer | None = None
) -> list[str]:
    writer = writer or checkpoints.Writer(store, "0a1b2c3d", keep)
    kept: list[str] = []
    for step in steps:
        kept = writer.publish(folder, stage(folder, step))
    return kept


def test_checkpoints_publish_last_keep_and_prune_leftovers(remote, tmp_path):
    store = remote.store()
    # Files of an upload cut short before its pointer: published never, pruned at the next publish.
    store.put_bytes(b"leftover", "checkpoints/ckpt-5.data-00000-of-00001")
    kept = publish_steps(store, tmp_path / "local", [10, 20, 30], keep=2)
    assert kept == ["ckpt-0a1b2c3d-20", "ckpt-0a1b2c3d-30"] == checkpoints.published(store)
    assert sorted(e.name for e in store.list("checkpoints")) == [
        "checkpoints/checkpoint",
        "checkpoints/ckpt-0a1b2c3d-20.data-00000-of-00001",
        "checkpoints/ckpt-0a1b2c3d-20.index",
        "checkpoints/ckpt-0a1b2c3d-30.data-00000-of-00001",
        "checkpoints/ckpt-0a1b2c3d-30.index",
    ]

    restored = checkpoints.fetch_latest(store, tmp_path / "restore")
    assert restored == tmp_path / "restore" / "ckpt-0a1b2c3d-30"
    assert (tmp_path / "restore" / "ckpt-0a1b2c3d-30.index").read_bytes() == b"index 30"
    assert checkpoints.latest_local(tmp_path / "restore") == restored


def test_a_checkpoint_gone_locally_is_not_published(remote, tmp_path):
    store = remote.store()
    assert checkpoints.Writer(store, "0a1b2c3d", 3).publish(tmp_path, "ckpt-7") is None
    assert store.list() == [] and checkpoints.fetch_latest(store, tmp_path / "restore") is None


def test_uploader_waits_out_an_outage_and_then_publishes(remote, tmp_path, capfd):
    store = remote.store()
    staging = tmp_path / "staging"
    uploader = Uploader(store, staging, keep=3)
    remote.server.stop()
    write(staging / "checkpoints" / "ckpt-1.data-00000-of-00001", b"d")
    write(staging / "checkpoints" / "ckpt-1.index", b"i")
    write(staging / "metrics.jsonl", b'{"epoch": 1}\n')
    uploader.checkpoint("ckpt-1")
    uploader.file("metrics.jsonl")
    assert not uploader.wait(2.5)  # retrying, not giving up
    remote.server.start()
    assert uploader.wait(30)
    assert [checkpoints.step_of(n) for n in checkpoints.published(store)] == [1]
    assert store.get_bytes("metrics.jsonl") == b'{"epoch": 1}\n'
    err = capfd.readouterr().err
    assert "WARNING test-0 cannot" in err and "training goes on (2 upload(s) waiting)" in err
    assert "answers again: uploaded ckpt-1" in err


def test_datasets_are_downloaded_once_with_progress(remote, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PML_DATA_CACHE", str(tmp_path / "cache"))
    arrays = {
        "x_train": np.zeros((20, 4, 4), np.uint8),
        "y_train": np.arange(20) % 2,
        "x_test": np.ones((4, 4, 4), np.uint8),
        "y_test": np.arange(4) % 2,
    }
    np.savez(tmp_path / "d.npz", **arrays)
    store = remote.store("datasets")
    store.put_file(tmp_path / "d.npz", "d.npz")
    store.put_file(write(tmp_path / "img" / "a.png", b"png-a"), "images/cats/a.png")
    store.put_file(write(tmp_path / "img" / "b.png", b"png-b"), "images/dogs/b.png")

    local = data_cache.local_file(remote.uri("datasets/d.npz"), None)
    assert local.read_bytes() == (tmp_path / "d.npz").read_bytes()
    folder = data_cache.local_folder(remote.uri("datasets/images"), None)
    assert (folder / "cats" / "a.png").read_bytes() == b"png-a" and (folder / "dogs" / "b.png").is_file()
    assert capfd.readouterr().err.count("100%") == 2

    stamp = (folder / "cats" / "a.png").stat().st_mtime_ns
    assert data_cache.local_folder(remote.uri("datasets/images"), None) == folder
    assert data_cache.local_file(remote.uri("datasets/d.npz"), None) == local
    assert (folder / "cats" / "a.png").stat().st_mtime_ns == stamp
    assert capfd.readouterr().err.count("using the cached copy") == 2

    store.put_file(write(tmp_path / "img" / "a.png", b"png-a2"), "images/cats/a.png")  # changed remotely
    data_cache.local_folder(remote.uri("datasets/images"), None)
    assert (folder / "cats" / "a.png").read_bytes() == b"png-a2"
    assert "1/1 files" in capfd.readouterr().err


def test_missing_remote_dataset_is_data_unavailable(remote, tmp_path):
    result = trainer(
        "--dataset",
        f"npz:{remote.uri('nothing/here.npz')}",
        "--model-dir",
        str(tmp_path / "m"),
        env={"PML_DATA_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 3
    assert said(result.stderr.strip().splitlines()[-1]) == (
        f"error: {remote.uri('nothing/here.npz')}: nothing there; upload the dataset first or fix the location"
    )


def test_artifacts_of_a_location(remote, tmp_path):
    store = remote.store()
    publish_steps(store, tmp_path / "local", [10, 20], keep=3)
    store.put_bytes(b"{}\n", "metrics.jsonl")
    store.put_bytes(b"x" * 2000, "saved_model/saved_model.pb")
    store.put_bytes(b"y" * 1000, "saved_model/variables/variables.index")
    store.put_bytes(b"z", "checkpoints/ckpt-0a1b2c3d-30.data-00000-of-00001")  # an upload cut short
    result = pmlctl("artifacts", remote.uri(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()[2:]]
    assert lines == [
        ["checkpoint", "1", "B", "1", "checkpoints/ckpt-0a1b2c3d-30", "(unpublished)"],
        ["checkpoint", "15", "B", "2", "checkpoints/ckpt-0a1b2c3d-20", "(latest)"],
        ["checkpoint", "15", "B", "2", "checkpoints/ckpt-0a1b2c3d-10"],
        ["checkpoint", str(len(store.get_bytes("checkpoints/checkpoint"))), "B", "1", "checkpoints/checkpoint"],
        ["metrics", "3", "B", "1", "metrics.jsonl"],
        ["saved", "model", "3.0", "kB", "2", "saved_model/"],
    ]
    missing = pmlctl("artifacts", remote.server.uri("no-such-bucket", "x"), cwd=tmp_path)
    assert missing.returncode == 3 and missing.stderr.startswith("error: ") and "no such bucket" in missing.stderr


@pytest.mark.slow
def test_trainer_learns_from_a_remote_npz_dataset(remote, tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    images = (labels[:, None, None] * 200 + rng.integers(0, 50, (600, 8, 8))).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=images[:500], y_train=labels[:500], x_test=images[500:], y_test=labels[500:])
    remote.store("datasets").put_file(tmp_path / "d.npz", "d.npz")
    result = trainer(
        "--dataset",
        f"npz:{remote.uri('datasets/d.npz')}",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--model-dir",
        str(tmp_path / "model"),
        env={"PML_DATA_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"downloading {remote.uri('datasets/d.npz')} [" in result.stderr
    assert json.loads((tmp_path / "model" / "result.json").read_text())["test_accuracy"] > 0.9
