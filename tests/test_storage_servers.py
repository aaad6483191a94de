"""The test storage servers themselves: an outage made with them must lose nothing acknowledged."""

from __future__ import annotations

import io
import threading

import urllib3
from minio import Minio
from minio.error import S3Error
from storage_servers import ACCESS_KEY, SECRET_KEY, S3Server
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
