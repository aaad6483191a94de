"""Which exception ends a task with which exit code (trainer/exits.py), the same for every role.

Apart from exits.py because it imports TensorFlow's error classes, and exits.py is read before
TensorFlow loads (the flags' and TF_CONFIG's checks, and pmlctl).
"""

from __future__ import annotations

import sys

from pml_trainer import exits, task_code
from pml_trainer.log import log
from pml_trainer.options import TrainOptions


def exit_code(err: BaseException) -> int | None:
    """The exit code of a task that `err` ends, the same for every role; None for an error nobody
    expected (a bug: its traceback, and exit code 1).

    Looked up once TensorFlow is loaded: the flags' and TF_CONFIG's checks, which run before it,
    return their codes themselves.
    """
    if isinstance(err, KeyboardInterrupt):  # perhaps while TensorFlow loads: not a second import now
        return exits.INTERRUPTED
    for kinds, code in _codes():
        if isinstance(err, kinds):
            return code
    return None


def reported(err: BaseException, opts: TrainOptions) -> int | None:
    """Say why `err` ends the process and return its exit code; None for a bug, which the caller
    re-raises (its traceback, exit code 1).

    A failure of the user's task shows the task's own frames, then one line (pml_trainer.task_code).
    Anything else with a code is one line, but for the codes that need none: a fenced chief's
    uploader has said why, and Ctrl-C needs no word."""
    code = exit_code(err)
    # Our own kinds of failure keep their codes even when raised under the user's frames: an outage
    # while train_data lists its files is retried (176), Ctrl-C is 130, a lost peer 175.
    ours = code is not None and code != exits.BAD_INPUT
    problem = err if isinstance(err, task_code.TaskError) else None if ours else task_code.failure(err, opts)
    if problem is not None:
        sys.stderr.write(problem.frames)
        log.error("%s", problem)
        return exits.BAD_INPUT
    if code is not None and code not in (exits.FENCED, exits.INTERRUPTED) and not _said_by_the_uploader(err):
        log.error("%s", err)
    return code


def _said_by_the_uploader(err: BaseException) -> bool:
    from pml_trainer.checkpoints import Taken

    return isinstance(err, Taken)


def _codes():
    """Most specific first: Fenced is a StorageError, StorageUnavailable one too."""
    import tensorflow as tf

    from pml_trainer.checkpoints import Fenced, Taken
    from pml_trainer.chiefs import Stalled
    from pml_trainer.controller import Preempted
    from pml_trainer.data import DataUnavailable
    from pml_trainer.errors import BadInput
    from pml_trainer.fingerprint import Mismatch
    from pml_trainer.liveness import PeerLost
    from pml_trainer.storage import StorageError, StorageUnavailable

    return (
        (Fenced, exits.FENCED),
        (Taken, exits.BAD_INPUT),  # another job or run has the model dir: a restart changes nothing
        (StorageUnavailable, exits.STORAGE_UNAVAILABLE),  # an outage outlasted the reads' retries
        ((DataUnavailable, StorageError), exits.DATA_UNAVAILABLE),
        (Mismatch, exits.BAD_INPUT),  # a checkpoint that does not fit the model, found on restore
        (BadInput, exits.BAD_INPUT),  # a task module that breaks the contract (pml_trainer.task)
        (Preempted, exits.PREEMPTED),
        (Stalled, exits.STALLED),
        # A server that stopped answering, or a TensorFlow channel to it that broke.
        ((PeerLost, tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError), exits.PEER_LOST),
    )
