"""The test storage servers themselves: an outage made with them must lose nothing acknowledged, and the
GCS emulator keeps GCS's preconditions."""

from __future__ import annotations

import io
import os
import threading

import pytest
import urllib3
from minio import Minio
from minio.error import S3Error
from storage_servers import ACCESS_KEY, SECRET_KEY, GCSServer, S3Server
from urllib3.exceptions import HTTPError


def test_a_restarted_s3_server_keeps_every_write_it_acknowledged(tmp_path):
    server = S3Server(tmp_path)
    server.start()
    try:
        client = server.client()
        client.make_bucket("pml-b")
        # Many objects listed after the hot one: saving them all takes a while, and the writer goes on.
        for i in range(100):
            client.put_object("pml-b", f"z-{i:03}", io.BytesIO(b"x" * 1000), 1000)
        acknowledged, stop, under_way = [], threading.Event(), threading.Event()

        def write() -> None:
            # No retries: an outage fails a write instead of delaying it past the restart.
            quick = Minio(
                f"127.0.0.1:{server.port}",
                access_key=ACCESS_KEY,
                secret_key=SECRET_KEY,
                secure=False,
                region="us-east-1",
                http_client=urllib3.PoolManager(retries=False),
            )
            for n in range(1_000_000):
                try:
                    quick.put_object("pml-b", "a-pointer", io.BytesIO(str(n).encode()), len(str(n)))
                except (S3Error, HTTPError, OSError):
                    stop.set()
                    return
                acknowledged.append(n)
                if n == 20:
                    under_way.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert under_way.wait(timeout=60)
        server.stop()
        writer.join(timeout=60)
        assert stop.is_set()
        server.start()
        # The write in flight at the stop may have taken effect unanswered, as on any server.
        kept = int(server.client().get_object("pml-b", "a-pointer").read())
        assert acknowledged[-1] <= kept <= acknowledged[-1] + 1
        assert len(list(server.client().list_objects("pml-b"))) == 101
    finally:
        server.stop()


# --- the GCS emulator with GCS's preconditions (gcs_with_preconditions.py) -------------------------


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A bucket on the emulator as the tests run it, through google-cloud-storage."""
    server = GCSServer(tmp_path_factory.mktemp("gcs"))
    server.start()
    yield bucket_on(server)
    server.stop()


@pytest.fixture(scope="module")
def bare_gcs(tmp_path_factory):
    server = GCSServer(tmp_path_factory.mktemp("bare-gcs"), enforce=False)
    server.start()
    yield bucket_on(server)
    server.stop()


def bucket_on(server: GCSServer):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    server.make_bucket("pml-b")
    client = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
    )
    return client.bucket("pml-b")


# google-cloud-storage sends up to 8 MiB in one multipart request, and more as a resumable upload
# (google/cloud/storage/blob.py, _MAX_MULTIPART_SIZE): both kinds are checked.
SIZES = {"multipart": 1000, "resumable": 9 << 20}


def refused(status: int, call) -> bool:
    """Whether `call` was refused, and with `status` (412 with GCS's reason for it)."""
    from google.api_core import exceptions

    try:
        call()
        return False
    except exceptions.GoogleAPICallError as err:
        error = err
    assert error.code == status, error
    if status == 412:  # the client quotes the error document of an upload, and parses the others'
        reasons = [e.get("reason") for e in error.errors or []]
        assert "conditionNotMet" in reasons or '"reason": "conditionNotMet"' in str(error), error
    return True


@pytest.mark.parametrize("kind", SIZES)
def test_the_gcs_server_refuses_uploads_whose_precondition_fails(gcs, kind, tmp_path):
    name = f"{kind}-object"
    data = tmp_path / "data"
    data.write_bytes(os.urandom(SIZES[kind]))
    first = gcs.blob(name)
    first.upload_from_filename(str(data), if_generation_match=0)  # create only: there is none
    generation = first.generation
    assert refused(412, lambda: gcs.blob(name).upload_from_filename(str(data), if_generation_match=0))
    assert refused(412, lambda: gcs.blob(name).upload_from_filename(str(data), if_generation_match=generation + 1))
    assert refused(304, lambda: gcs.blob(name).upload_from_filename(str(data), if_generation_not_match=generation))
    assert gcs.get_blob(name).generation == generation  # nothing refused was written
    second = gcs.blob(name)
    second.upload_from_filename(str(data), if_generation_match=generation)
    assert second.generation != generation
    third = gcs.blob(name)
    third.upload_from_filename(str(data), if_generation_not_match=generation)
    assert refused(412, lambda: gcs.blob(f"{name}-absent").upload_from_filename(str(data), if_generation_match=1))


def test_the_gcs_server_refuses_deletes_and_reads_whose_precondition_fails(gcs):
    blob = gcs.blob("read-and-delete")
    blob.upload_from_string(b"one")
    generation = blob.generation
    assert refused(412, lambda: gcs.blob("read-and-delete").download_as_bytes(if_generation_match=generation + 1))
    assert refused(304, lambda: gcs.blob("read-and-delete").download_as_bytes(if_generation_not_match=generation))
    assert refused(412, lambda: gcs.blob("read-and-delete").reload(if_metageneration_match=99))
    read = gcs.blob("read-and-delete")
    assert read.download_as_bytes(if_generation_match=generation) == b"one"
    assert read.generation == generation  # X-Goog-Generation, as GCS sends it
    assert refused(412, lambda: gcs.blob("read-and-delete").delete(if_generation_match=generation + 1))
    assert gcs.get_blob("read-and-delete") is not None
    gcs.blob("read-and-delete").delete(if_generation_match=generation)
    assert gcs.get_blob("read-and-delete") is None


def test_of_racing_swaps_at_one_generation_exactly_one_wins(gcs):
    """Check and write are one step: 8 writers at the same generation, at once."""
    from google.api_core import exceptions

    blob = gcs.blob("raced")
    blob.upload_from_string(b"start")
    won, lost, go = [], [], threading.Barrier(8)

    def swap(n: int) -> None:
        go.wait()
        try:
            gcs.blob("raced").upload_from_string(str(n).encode(), if_generation_match=blob.generation)
            won.append(n)
        except exceptions.PreconditionFailed:
            lost.append(n)

    writers = [threading.Thread(target=swap, args=(n,)) for n in range(8)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert len(won) == 1 and len(lost) == 7
    assert gcs.blob("raced").download_as_bytes() == str(won[0]).encode()


def test_the_bare_gcs_emulator_ignores_preconditions(bare_gcs):
    """What gcs_with_preconditions.py is for (measured on gcp-storage-emulator 2026.7.19)."""
    blob = bare_gcs.blob("o")
    blob.upload_from_string(b"one", if_generation_match=0)
    generation = blob.generation
    bare_gcs.blob("o").upload_from_string(b"two", if_generation_match=0)
    bare_gcs.blob("o").upload_from_string(b"three", if_generation_match=generation)  # a stale one
    read = bare_gcs.blob("o")
    assert read.download_as_bytes() == b"three"
    assert read.generation is None  # no X-Goog-Generation
    bare_gcs.blob("o").delete(if_generation_match=generation)
    assert bare_gcs.get_blob("o") is None
