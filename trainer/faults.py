"""Test hooks: points where the trainer stops when a test tells it to, so that the test can break
something there (kill a process, start a rival chief) at a moment it could not otherwise hit.

Production never sets these: each is an environment variable that only tests set, and without
it the hook does nothing. Every hook the trainer has lives here, so that one file says what a test
can do to a running trainer.

PML_TEST_PAUSE_BEFORE_PUBLISH="<step>:<marker file>[:<go file>]"
    The chief's uploader stops before it publishes the first checkpoint at or past <step>, after
    the checkpoint's files are up, and says so by creating the marker file (its content: the
    step). Without a go file it stops for good; with one, it goes on once that file exists. With
    the marker present it does not stop again. Set by tests/test_remote_jobs.py (the chief is
    killed there, mid-publish: its restart publishes what it staged) and tests/test_two_writers.py
    (an old chief held there while a new one takes the model dir over). tests/test_fencing.py
    replaces pause_before_publish itself, to run a rival writer at that point in-process.

PML_TEST_HOLD_TRAINING="<limit file>"
    After the chief saved a checkpoint and handed it to the uploader, its training holds while the
    limit file names a step at or below the checkpoint's: it writes that step to "<limit file>.held"
    and goes on once the limit file is gone or names a later step, removing the .held file first.
    Both files are written whole (write_step) and read with step_in. A test moves the limit on in
    stages, so that what it does to the job lands while training is surely under way (uploads
    superseded on a slow store do not hold training back, so the published pointer cannot say
    that). Set by tests/test_tfrecord_jobs.py (a worker killed) and
    tests/docker/test_pod_specs.py (a worker, the ps and the chief preempted in turn).

PML_TEST_PAUSE_BEFORE_CLAIM="<marker file>:<go file>"
    The chief of a remote model dir stops before it claims the model dir, says so by creating
    the marker file, and goes on once the go file exists. Set by tests/test_two_writers.py (a
    rival publishes while mirrored workers have read the pointer and the chief has not).

Not hooks, though tests use them too: the dataset sources in trainer/data.py
(PML_FASHION_MNIST_URL, PML_FLOWERS_URL, PML_SYSTEM_DATASETS), which a mirror or an offline
machine may set, and PML_STAGING_DIR and PML_DATA_CACHE, which place the trainer's local folders.
"""

from __future__ import annotations

import os
import pathlib
import time

from pml_trainer.log import log

PAUSE_BEFORE_PUBLISH = "PML_TEST_PAUSE_BEFORE_PUBLISH"
PAUSE_BEFORE_CLAIM = "PML_TEST_PAUSE_BEFORE_CLAIM"
HOLD_TRAINING = "PML_TEST_HOLD_TRAINING"


def pause_before_publish(step: int) -> None:
    """Stop here if PML_TEST_PAUSE_BEFORE_PUBLISH says so for a checkpoint at `step` (see above)."""
    hook = os.environ.get(PAUSE_BEFORE_PUBLISH)
    if not hook:
        return
    at, marker, *go = hook.split(":")
    if step < int(at) or os.path.exists(marker):
        return
    pathlib.Path(marker).write_text(str(step))
    log.info(f"test hook: checkpoint at step {step} uploaded, not yet published; pausing")
    while not (go and os.path.exists(go[0])):
        time.sleep(0.1)
    log.info(f"test hook: going on after the checkpoint at step {step}")


def hold_training(step: int) -> None:
    """Hold here while PML_TEST_HOLD_TRAINING's limit file says so for a checkpoint at `step`."""
    limit = os.environ.get(HOLD_TRAINING)
    if not limit:
        return
    marker = pathlib.Path(f"{limit}.held")
    told = False
    while (at := step_in(pathlib.Path(limit))) is not None and at <= step:
        if not told:
            write_step(marker, step)
            log.info(f"test hook: checkpoint at step {step} saved, training held")
            told = True
        time.sleep(0.1)
    if told:
        marker.unlink(missing_ok=True)
        log.info(f"test hook: going on after the checkpoint at step {step}")


def step_in(path: pathlib.Path) -> int | None:
    """The step a hold's file names (written by write_step), or None without one."""
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return None


def write_step(path: pathlib.Path, step: int) -> None:
    """Name `step` in a hold's file, whole: by a rename, so that a reader never sees half of it."""
    new = path.with_name(f"{path.name}.new")
    new.write_text(str(step))
    new.replace(path)


def pause_before_claim() -> None:
    """Stop here if PML_TEST_PAUSE_BEFORE_CLAIM says so (see above)."""
    hook = os.environ.get(PAUSE_BEFORE_CLAIM)
    if not hook:
        return
    marker, go = hook.split(":")
    pathlib.Path(marker).write_text("claim")
    log.info("test hook: pausing before the claim")
    while not os.path.exists(go):
        time.sleep(0.1)
