"""`python -m pml_trainer`: check the flags and TF_CONFIG, then run this task's role.

Both checks happen before TensorFlow is imported, so bad input fails in a fraction of a second,
with one line on stderr and exit code 2. A remote model dir that cannot be written (no such
bucket, credentials refused) or a local dataset that is not there fails the same way, with exit
code 3.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import sys

from pml_trainer import exits

# Until its role installs a handler of its own, SIGTERM ends a task at once, with the code of a
# preemption. In a container the task is PID 1, which the kernel shields from every signal it has
# no handler for (pid_namespaces(7)): a pod stopped while it starts would otherwise run on until
# SIGKILL at the end of the grace period and end 137, which TFJob mode counts as a crash (issue 26).
signal.signal(signal.SIGTERM, lambda *_: os._exit(exits.PREEMPTED))

from pml_trainer import failures, fingerprint, model_dir, readings, task_code  # noqa: E402 (after the handler)
from pml_trainer.checkpoints import Fenced  # noqa: E402
from pml_trainer.errors import BadInput  # noqa: E402
from pml_trainer.log import configure, log  # noqa: E402
from pml_trainer.options import parse_args  # noqa: E402
from pml_trainer.storage import StorageError, is_remote, preflight  # noqa: E402
from pml_trainer.tf_config import parse  # noqa: E402


def main(argv: list[str]) -> int:
    configure()
    try:
        opts = parse_args(argv)
        cfg = parse(os.environ.get("TF_CONFIG"))
    except BadInput as err:
        log.error("%s", err)
        return exits.BAD_INPUT
    configure(f"{cfg.task_type}-{cfg.task_index}")
    serves_only = cfg.strategy == "parameter_server" and cfg.task_type in ("worker", "ps")
    # A ps reads no data; a worker of a ps job reads image files as it runs, but not an npz.
    reads_data = not serves_only or (cfg.task_type == "worker" and opts.reads_image_files())
    if reads_data and (missing := opts.missing_local_data()):
        log.error("%s", missing)
        return exits.DATA_UNAVAILABLE
    try:
        if is_remote(opts.model_dir) and not serves_only:
            preflight(opts.model_dir, opts.s3_endpoint)
    except StorageError as err:
        log.error(f"--model-dir {err}")
        return exits.DATA_UNAVAILABLE
    if not serves_only and cfg.task_type != "evaluator":
        # Before TensorFlow loads: a model dir holding another run is refused in one line, as bad
        # input (a restart would be refused the same way); with --restart the chief discards it.
        local_chief = cfg.is_chief and not is_remote(opts.model_dir)
        try:
            if local_chief and opts.restart:
                # Before admit, which then deletes the other run: never one another chief still writes.
                model_dir.hold_local(pathlib.Path(opts.model_dir))
            discarded = fingerprint.admit(opts, may_discard=cfg.is_chief)
            if local_chief:  # after admit otherwise: a relaunch it refuses leaves the folder as it was
                model_dir.hold_local(pathlib.Path(opts.model_dir))
        except Fenced as err:
            log.error("%s", err)
            return exits.FENCED
        except fingerprint.Mismatch as err:
            log.error("%s", err)
            return exits.BAD_INPUT
        except StorageError as err:
            log.error(f"--model-dir {err}")
            return exits.DATA_UNAVAILABLE
        if discarded:
            log.info(discarded)
        if opts.task is not None and (changed := fingerprint.code_change(fingerprint.read(opts), opts)):
            log.warning(changed)
    readings.start(f"{cfg.task_type}-{cfg.task_index}", opts.model_dir, opts.s3_endpoint)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's Python warnings (a checkpoint save retraced under ParameterServerStrategy,
    # each time) bury the training log; errors still show.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # TF_CONFIG has been read; leaving it set would let TensorFlow apply it a second time, its own
    # way (with the evaluator in the cluster, and "master" not renamed).
    os.environ.pop("TF_CONFIG", None)
    try:
        from pml_trainer import thread_pools

        if why := thread_pools.apply(opts, cfg, serves_only):
            log.info(why)
        task_code.load(opts)  # every task runs the user's code: a task that cannot run fails at once, everywhere
        if cfg.task_type == "evaluator":
            from pml_trainer import evaluator as role
        elif cfg.strategy == "parameter_server" and cfg.task_type in ("worker", "ps"):
            from pml_trainer import server as role
        else:
            from pml_trainer import train as role
        return role.main(opts, cfg)
    except (Exception, KeyboardInterrupt) as err:
        code = failures.reported(err, opts)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    code = main(sys.argv[1:])
    readings.finish()
    sys.stdout.flush()
    sys.stderr.flush()
    # TensorFlow's server and coordinator threads can hold up interpreter shutdown for ever.
    os._exit(code)
