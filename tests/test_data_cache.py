"""The dataset cache mirrors the remote folder: what moved or went away remotely goes here too,
and a cached file is checked by its size as well as its version (issue 12, item 7).

Against real storage servers on 127.0.0.1 (see storage_servers.py); no TensorFlow.
"""

from __future__ import annotations

import os
import pathlib

import pytest
from storage_servers import remote, server  # noqa: F401 (fixtures)

from pml_trainer import data_cache


@pytest.fixture
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    monkeypatch.setenv("PML_DATA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def put(store, tmp_path: pathlib.Path, name: str, data: bytes) -> None:
    source = tmp_path / "upload" / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(data)
    store.put_file(source, name)


def files(folder: pathlib.Path) -> list[str]:
    """Every file and folder below `folder` but the cache's own manifest."""
    return sorted(
        p.relative_to(folder).as_posix() + ("/" if p.is_dir() else "")
        for p in folder.rglob("*")
        if p.name != data_cache.MANIFEST
    )


def test_a_file_moved_to_another_class_has_one_label_in_the_cache(remote, cache, tmp_path):
    store = remote.store("pets")
    put(store, tmp_path, "cats/a.png", b"image a")
    put(store, tmp_path, "dogs/b.png", b"image b")
    folder = data_cache.local_folder(remote.uri("pets"), None)
    assert files(folder) == ["cats/", "cats/a.png", "dogs/", "dogs/b.png"]

    put(store, tmp_path, "dogs/a.png", b"image a")  # cats/a.png moved to dogs/a.png
    store.delete("cats/a.png")
    data_cache.local_folder(remote.uri("pets"), None)
    # One copy, under its new label; the emptied cats/ folder is gone too, or it would still
    # count as a class (with no images).
    assert files(folder) == ["dogs/", "dogs/a.png", "dogs/b.png"]


def test_two_caches_of_one_folder_end_up_with_the_same_files(remote, tmp_path, monkeypatch, capfd):
    """One machine's cache is from before a file was removed, and holds a file the manifest
    never knew (left by an older version, or copied in by hand); another starts empty."""
    store = remote.store("flowers")
    for name in ("daisy/1.jpg", "daisy/2.jpg", "tulips/1.jpg"):
        put(store, tmp_path, name, name.encode())
    monkeypatch.setenv("PML_DATA_CACHE", str(tmp_path / "old-pod"))
    old = data_cache.local_folder(remote.uri("flowers"), None)
    (old / "tulips" / "stray.jpg").write_bytes(b"not in the bucket")
    store.delete("daisy/2.jpg")

    assert files(data_cache.local_folder(remote.uri("flowers"), None)) == [
        "daisy/",
        "daisy/1.jpg",
        "tulips/",
        "tulips/1.jpg",
    ]
    assert "removed 2 cached file(s) no longer there" in capfd.readouterr().err
    monkeypatch.setenv("PML_DATA_CACHE", str(tmp_path / "new-pod"))
    assert files(data_cache.local_folder(remote.uri("flowers"), None)) == files(old)


def test_a_cached_file_of_another_size_is_downloaded_again(remote, cache, tmp_path, capfd):
    store = remote.store("data")
    put(store, tmp_path, "images/cats/a.png", b"0123456789")
    folder = data_cache.local_folder(remote.uri("data/images"), None)
    (folder / "cats" / "a.png").write_bytes(b"01234")  # cut short on disk; its version is unchanged
    capfd.readouterr()
    data_cache.local_folder(remote.uri("data/images"), None)
    assert (folder / "cats" / "a.png").read_bytes() == b"0123456789"
    assert "1/1 files" in capfd.readouterr().err


def test_one_cached_file_leaves_its_neighbours_alone(remote, cache, tmp_path):
    """`npz:` caches one file of a folder: the other files there may be other datasets."""
    store = remote.store("arrays")
    put(store, tmp_path, "a.npz", b"array a")
    put(store, tmp_path, "b.npz", b"array b")
    a = data_cache.local_file(remote.uri("arrays/a.npz"), None)
    b = data_cache.local_file(remote.uri("arrays/b.npz"), None)
    store.delete("b.npz")
    assert data_cache.local_file(remote.uri("arrays/a.npz"), None).read_bytes() == b"array a"
    assert b.read_bytes() == b"array b" and a.parent == b.parent


@pytest.mark.parametrize(
    "left", [b"", b'{"cats/a.png": "1", "dogs/b', b"\0" * 64, b"[]"], ids=["empty", "a prefix", "zero-filled", "a list"]
)
def test_a_damaged_manifest_is_an_empty_cache_not_a_failed_start(remote, cache, tmp_path, capfd, left):
    """Issue 25, defect 7: what a power loss leaves of a manifest renamed before its data reached
    the disk. It raised JSONDecodeError at every start on this machine; now every file is fetched
    again, as into an empty cache, with one line saying why."""
    store = remote.store("pets")
    put(store, tmp_path, "cats/a.png", b"image a")
    put(store, tmp_path, "dogs/b.png", b"image b")
    folder = data_cache.local_folder(remote.uri("pets"), None)
    (folder / "cats" / "a.png").write_bytes(b"image x")  # same size: only the manifest vouched for it
    (folder / data_cache.MANIFEST).write_bytes(left)
    capfd.readouterr()
    assert data_cache.local_folder(remote.uri("pets"), None) == folder
    said = capfd.readouterr().err
    assert said.count("is unreadable (cut short by a crash?); downloading again") == 1
    assert (folder / "cats" / "a.png").read_bytes() == b"image a"
    assert files(folder) == ["cats/", "cats/a.png", "dogs/", "dogs/b.png"]
    capfd.readouterr()
    data_cache.local_folder(remote.uri("pets"), None)  # the manifest is whole again
    assert "using the cached copy" in capfd.readouterr().err


def test_the_manifest_is_synced_before_and_after_its_rename(remote, cache, tmp_path, monkeypatch):
    """Without fsync a power loss may leave the renamed manifest empty (see pml_trainer.durable)."""
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(pathlib.Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = remote.store("pets")
    put(store, tmp_path, "cats/a.png", b"image a")
    synced.clear()
    folder = data_cache.local_folder(remote.uri("pets"), None)
    manifest = [i for i, path in enumerate(synced) if data_cache.MANIFEST in path.name and path.name.endswith(".part")]
    assert manifest and synced[manifest[-1] + 1] == folder  # the file, then its folder after the rename
