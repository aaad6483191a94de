"""moto's S3 server, started with the buckets and objects that S3Server.stop() saved.

moto keeps objects in memory only. Restoring them through the API after a restart leaves a window
in which the server answers NoSuchBucket, which the uploader rightly takes for a permanent error;
so they are put into moto's backend here, before the server opens its port.

    python moto_with_state.py STATE_FILE moto_server-arguments...
"""

from __future__ import annotations

import os
import pickle
import sys

from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import main

if __name__ == "__main__":
    state, args = sys.argv[1], sys.argv[2:]
    if os.path.exists(state):
        with open(state, "rb") as saved:
            buckets = pickle.load(saved)
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        for bucket, objects in buckets.items():
            backend.create_bucket(bucket, "us-east-1")
            for key, data in objects.items():
                backend.put_object(bucket, key, data)
    main(args)
