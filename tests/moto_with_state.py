"""moto's S3 server, keeping its objects across a stop and a start, as a persistent S3 service does.

moto keeps objects in memory only. So on SIGTERM this process saves them to STATE_FILE, and at start
it puts them back into moto's backend before it opens its port (restoring them through the API
would leave a window in which the server answers NoSuchBucket, which the uploader rightly takes for
a permanent error).

The save must hold every write the server acknowledged. A snapshot taken by a client through the
API while a trainer still writes is not atomic: a pointer written after the listing was read is
acknowledged, then lost at the restart, and its writer rightly concludes that another chief took
over (it once failed test_storage_outage_during_training_loses_no_checkpoint that way). Here every
request passes a gate; SIGTERM closes the gate, waits for the requests inside to finish, saves,
and exits with the gate still closed: a request that did not get in is never answered.

    python moto_with_state.py STATE_FILE HOST PORT
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading

from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


class Gate:
    """Requests pass while it is open; `close` waits for those inside and keeps everyone else out."""

    def __init__(self):
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False

    def __call__(self, app):
        def gated(environ, start_response):
            with self._cond:
                while self._closed:
                    self._cond.wait()
                self._inside += 1
            try:
                return app(environ, start_response)
            finally:
                with self._cond:
                    self._inside -= 1
                    self._cond.notify_all()

        return gated

    def close(self) -> None:
        with self._cond:
            self._closed = True
            while self._inside:
                self._cond.wait()


def backend():
    return s3_backends[DEFAULT_ACCOUNT_ID]["global"]


def restore(state: str) -> None:
    if not os.path.exists(state):
        return
    with open(state, "rb") as saved:
        buckets = pickle.load(saved)
    for bucket, objects in buckets.items():
        backend().create_bucket(bucket, "us-east-1")
        for key, data in objects.items():
            backend().put_object(bucket, key, data)


def save(state: str) -> None:
    kept = {name: {key: obj.value for key, obj in bucket.keys.items()} for name, bucket in backend().buckets.items()}
    with open(state + ".part", "wb") as part:
        pickle.dump(kept, part)
    os.replace(state + ".part", state)


def main(state: str, host: str, port: int) -> None:
    restore(state)
    gate = Gate()
    server = make_server(
        host,
        port,
        gate(DomainDispatcherApplication(create_backend_app)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )

    # SIGTERM is blocked in every thread (the server's threads inherit the mask) and taken here by
    # sigwait: a handler would run only once the signal reached the main thread, not a server's.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.sigwait({signal.SIGTERM})
    gate.close()
    save(state)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
