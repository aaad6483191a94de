"""Exit codes, chosen for Kubernetes' `restartPolicy: ExitCode` (TFJob).

The operator retries exit codes of 128 and above and treats 1-127 as permanent failures, so
anything a restart can cure (a lost peer, a preemption) exits at 128 or above, and anything the
user must fix (bad flags, bad TF_CONFIG, a missing dataset) exits below it.
"""

from __future__ import annotations

OK = 0
FAILED = 1  # training itself failed; a restart would fail the same way
BAD_INPUT = 2  # flags, TF_CONFIG or job spec the user must fix
DATA_UNAVAILABLE = 3  # a dataset or location that cannot be read
CHIEF_FAILED = 4  # a server saw its chief fail for good
INTERRUPTED = 130  # SIGINT (Ctrl-C)
PREEMPTED = 143  # SIGTERM: checkpoint saved, restart me
STALLED = 174  # the chief lost a peer again and again without a step of progress: counted, unlike 175
PEER_LOST = 175  # a ps or worker became unreachable: restart me, I resume from a checkpoint
STORAGE_UNAVAILABLE = 176  # the model dir or dataset did not answer (an outage, throttling): restart me
FENCED = 177  # another chief took over the model dir; this one stopped writing there (trainer/checkpoints.py)
# Between SIGTERM and SIGKILL: Kubernetes' default terminationGracePeriodSeconds, which the
# supervisors of local and docker jobs give too.
GRACE_SECONDS = 30.0


def is_retryable(code: int) -> bool:
    """Would Kubernetes' ExitCode policy restart a container that exited with `code`?

    A negative code is Python's way of saying "killed by signal N"; a container runtime reports
    that as 128 + N, which is retryable.
    """
    return code < 0 or code >= 128
