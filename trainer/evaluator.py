"""The evaluator role: a sidecar that evaluates each new checkpoint on the test split, with the
task's metrics (pml_trainer.task), without joining the cluster.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import threading
import time

import tensorflow as tf

from pml_trainer import chief_state, epoch_report, exits
from pml_trainer.errors import BadInput
from pml_trainer.log import log
from pml_trainer.model_dir import ModelDir
from pml_trainer.options import TrainOptions
from pml_trainer.storage import StorageError
from pml_trainer.task import Task
from pml_trainer.tf_config import TFConfig, control_address

# On SIGTERM during the final evaluation, the evaluator finishes it first, for at most this long:
# within Kubernetes' default grace period of 30 s, after which SIGKILL comes anyway.
DRAIN_SECONDS = 25.0


def main(opts: TrainOptions, cfg: TFConfig) -> int:
    """Evaluate every new checkpoint on the test split until the chief says training is over,
    then the final checkpoint, and only then confirm the end to the chief (see pml_trainer.chief_state)."""
    model_dir = ModelDir(opts.model_dir, opts.s3_endpoint, f"evaluator-{cfg.task_index}", opts.keep_checkpoints)
    sigterm = OnSigterm(model_dir)
    signal.signal(signal.SIGTERM, sigterm)
    model_dir.fetch("eval.jsonl")
    task = Task(opts)
    test = task.test_data()
    if test is None:
        raise BadInput(f"{task.describe()} defines no eval_data(params): the evaluator has nothing to evaluate on")
    model = task.built_model()
    checkpoint = tf.train.Checkpoint(model=model)
    evaluate = task.evaluation(model)
    writer = tf.summary.create_file_writer(str(model_dir.path / "logs" / "eval"))
    done: set[str] = set()
    evaluated = [-1]  # the step of the newest checkpoint evaluated and written to eval.jsonl
    unreachable = [False]  # warn once per outage, not at every poll

    def evaluate_latest() -> None:
        try:
            latest = model_dir.latest_checkpoint()
        except StorageError as err:
            if not unreachable[0]:
                log.warning(f"{err}; trying again at every poll")
            unreachable[0] = True
            return
        if unreachable[0]:
            log.info(f"storage {model_dir.uri} answers again")
            unreachable[0] = False
        if latest is None or latest in done:
            return
        try:
            # Only the model is restored (not the optimizer), but every one of its variables must be.
            checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
        except (tf.errors.NotFoundError, tf.errors.DataLossError):
            return  # the chief pruned it meanwhile; the next poll sees a newer one
        except (AssertionError, ValueError) as err:
            # Another run's checkpoint (one that --restart is about to discard, say): not worth a row.
            done.add(latest)
            log.warning(
                f"{pathlib.Path(latest).name} does not fit this model "
                f"({str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__}); skipping it"
            )
            return
        done.add(latest)
        step = int(latest.rpartition("-")[2])
        scores = {f"test_{name}": value for name, value in evaluate(test).items()}
        record = {"step": step, **scores, "checkpoint": model_dir.where(f"checkpoints/{pathlib.Path(latest).name}")}
        with open(model_dir.path / "eval.jsonl", "a") as out:
            out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())  # a local model dir may be a volume that outlives this pod
        with writer.as_default(step=step):
            for name, value in scores.items():
                epoch_report.scalar(name, value, step)
        writer.flush()
        model_dir.publish("eval.jsonl")
        model_dir.publish("logs/eval")
        evaluated[0] = max(evaluated[0], step)
        log.info(f"evaluated {pathlib.Path(latest).name}: {epoch_report.scores(scores)}")

    def evaluate_final(reply: dict) -> bool:
        """Once the chief is done: evaluate its last checkpoint (at step reply["step"]) unless
        that is done already, and wait for eval.jsonl's upload; True when both happened in time.

        The chief waits for this before it exits, since its exit may get this task deleted."""
        if reply.get("state") != chief_state.DONE:
            return True  # a failed job has no final checkpoint to wait for
        sigterm.finishing = True
        final_step = int(reply.get("step") or 0)
        deadline = time.monotonic() + chief_state.FINAL_EVALUATION_SECONDS
        if evaluated[0] < final_step:
            log.info(
                f"the chief is done at step {final_step}: evaluating its last checkpoint before confirming the end"
            )
        while True:
            evaluate_latest()
            left = deadline - time.monotonic()
            if evaluated[0] >= final_step:
                try:
                    model_dir.close(max(left, 1.0))
                    return True
                except StorageError as err:
                    log.warning("%s", err)
            if left <= 0:
                log.warning(
                    f"could not evaluate and publish the final checkpoint (step {final_step}) "
                    f"within {chief_state.FINAL_EVALUATION_SECONDS:.0f}s; the chief leaves without it"
                )
                return False
            time.sleep(1.0)

    host, port = control_address(cfg.chief_address)
    final = chief_state.wait_for_end(
        host,
        port,
        f"evaluator:{cfg.task_index}",
        opts.orphan_timeout,
        on_poll=evaluate_latest,
        before_acknowledging=evaluate_final,
        first_contact_timeout=chief_state.first_contact_timeout(opts.chief_start_timeout, opts.orphan_timeout),
    )
    if final != chief_state.DONE:
        evaluate_latest()  # the latest checkpoint of a failed job may still be worth a row
        model_dir.close()
        return exits.CHIEF_FAILED
    # OK even when the final evaluation did not make it (both logs say so): under TFJob a permanent
    # failure of the evaluator, racing the chief's exit, could fail a job whose training succeeded.
    model_dir.done()
    return exits.OK


class OnSigterm:
    """The evaluator's SIGTERM handler: leave soon, but not before what it wrote is uploaded."""

    def __init__(self, model_dir: ModelDir):
        self.model_dir = model_dir
        self.finishing = False  # the chief is done, and waits for the final evaluation
        self._received = False

    def __call__(self, *_) -> None:
        if self._received:  # a second SIGTERM changes nothing: the first one's deadline holds
            return
        self._received = True
        if self.finishing:
            # The job may be going away regardless (deleted, or the chief stopped waiting). Finish
            # the final evaluation if the grace period allows.
            log.info(f"SIGTERM: finishing the final evaluation first (at most {DRAIN_SECONDS:.0f}s)")
            threading.Timer(DRAIN_SECONDS, os._exit, args=(exits.OK,)).start()
            return
        # An evaluation in progress is not worth waiting for (a restarted evaluator evaluates the
        # latest checkpoint again), but rows in eval.jsonl still queued for a remote model dir are:
        # nobody would write them again.
        # Stopped before the end: a retryable code, or the Training Operator fails the whole TFJob
        # (see chief_state.drain).
        pending = self.model_dir.uploader.pending() if self.model_dir.uploader else 0
        if not pending:
            os._exit(exits.PREEMPTED)
        log.info(
            f"SIGTERM: {pending} upload(s) of eval.jsonl and its logs still pending; finishing them first "
            f"(at most {DRAIN_SECONDS:.0f}s)"
        )
        threading.Thread(target=self._upload_then_exit, daemon=True).start()

    def _upload_then_exit(self) -> None:
        try:
            self.model_dir.close(DRAIN_SECONDS)
        except StorageError as err:
            log.warning("%s", err)
        os._exit(exits.OK if self.finishing else exits.PREEMPTED)
