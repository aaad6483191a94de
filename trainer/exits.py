"""Exit codes, chosen for Kubernetes' `restartPolicy: ExitCode` (TFJob).

The operator retries exit codes of 128 and above and treats 1-127 as permanent failures, so
anything a restart can cure (a lost peer, a preemption) exits at 128 or above, and anything the
user must fix (bad flags, bad TF_CONFIG, a missing dataset) exits below it.
"""

from __future__ import annotations

from typing import Optional

OK = 0
FAILED = 1  # training itself failed; a restart would fail the same way
BAD_INPUT = 2  # flags, TF_CONFIG or job spec the user must fix
DATA_UNAVAILABLE = 3  # a dataset or location that cannot be read
CHIEF_FAILED = 4  # a server saw its chief fail for good
INTERRUPTED = 130  # SIGINT (Ctrl-C)
PREEMPTED = 143  # SIGTERM: checkpoint saved, restart me
PEER_LOST = 175  # a ps or worker became unreachable: restart me, I resume from a checkpoint
STORAGE_UNAVAILABLE = 176  # the model dir or dataset did not answer (an outage, throttling): restart me
FENCED = 177  # another chief took over the model dir; this one stopped writing there (trainer/checkpoints.py)


def is_retryable(code: int) -> bool:
    """Would Kubernetes' ExitCode policy restart a container that exited with `code`?

    A negative code is Python's way of saying "killed by signal N"; a container runtime reports
    that as 128 + N, which is retryable.
    """
    return code < 0 or code >= 128


def for_error(err: BaseException) -> Optional[int]:
    """The exit code of a task that `err` ends, the same for every role; None for an error nobody
    expected (a bug: its traceback, and exit code 1).

    Looked up once TensorFlow is loaded: the flags' and TF_CONFIG's checks, which run before it,
    return their codes themselves.
    """
    for kinds, code in _codes():
        if isinstance(err, kinds):
            return code
    return None


def _codes():
    """Most specific first: Fenced is a StorageError, StorageUnavailable one too."""
    import tensorflow as tf

    from trainer.checkpoints import Fenced
    from trainer.controller import Preempted
    from trainer.data import DataUnavailable
    from trainer.fingerprint import Mismatch
    from trainer.liveness import PeerLost
    from trainer.storage import StorageError, StorageUnavailable

    return (
        (Fenced, FENCED),
        (StorageUnavailable, STORAGE_UNAVAILABLE),  # an outage outlasted the reads' retries
        ((DataUnavailable, StorageError), DATA_UNAVAILABLE),
        (Mismatch, BAD_INPUT),  # a checkpoint that does not fit the model, found on restore
        (Preempted, PREEMPTED),
        # A server that stopped answering, or a TensorFlow channel to it that broke.
        ((PeerLost, tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError), PEER_LOST),
        (KeyboardInterrupt, INTERRUPTED),
    )
