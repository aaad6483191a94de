"""The controller: the epochs of training, when to checkpoint, validate and report, resumption
from the latest checkpoint, and SIGTERM (a checkpoint, then an exit for a restart).

As Orbit's `Controller` (orbit/controller.py) drives a trainer in loops of steps between
checkpoints and evaluations, this one drives pml_trainer.loop's StepRunner.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
import threading
import time

import keras
import tensorflow as tf

from pml_trainer import epoch_report, faults, fingerprint, loop, readings
from pml_trainer.log import log
from pml_trainer.model_dir import ModelDir
from pml_trainer.options import TrainOptions
from pml_trainer.storage import StorageUnavailable
from pml_trainer.task import Task
from pml_trainer.tf_config import TFConfig

PROGRESS_EVERY = 15.0  # seconds between progress lines within an epoch
CHIEF_CPU = "/job:chief/replica:0/task:0/device:CPU:0"  # the coordinator, in a ParameterServerStrategy cluster


def _same_everywhere(strategy: tf.distribute.Strategy, value: int) -> bool:
    """Whether every replica holds the same `value`: the sum of squares times the count equals the
    square of the sum only then (one all-reduce of three numbers)."""

    @tf.function
    def totals() -> tf.Tensor:
        mine = tf.constant([1, value, value * value], tf.int64)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(mine)), axis=None)

    count, total, squares = (int(v) for v in totals().numpy())
    return count * squares == total * total


class Preempted(Exception):
    """SIGTERM arrived; the loop saves a checkpoint and exits for a restart."""


class Controller:
    """Trains `task` under `strategy` to --epochs, from where the latest checkpoint left off."""

    def __init__(
        self,
        task: Task,
        cfg: TFConfig,
        model_dir: ModelDir,
        strategy: tf.distribute.Strategy,
        coordinator: tf.distribute.coordinator.ClusterCoordinator | None,
        preempted: threading.Event,
    ):
        opts = self.opts = task.opts
        self.task, self.cfg, self.model_dir, self.preempted = task, cfg, model_dir, preempted
        self.replicas = strategy.num_replicas_in_sync
        self.global_batch = max(opts.batch_size // self.replicas, 1) * self.replicas
        self.steps_per_epoch = max(task.examples_per_epoch() // self.global_batch, 1)
        with strategy.scope():
            self.model = task.built_model()
            self.optimizer = task.build_optimizer(self.model)
        self.checkpoints = Checkpoints(
            opts, cfg, model_dir, self.model, self.optimizer, io_on_chief=coordinator is not None
        )
        self.step = self._restore_what_the_chief_restores(strategy)
        self.epoch = min(self.step // self.steps_per_epoch, opts.epochs)
        if self.step:
            log.info(f"resumed from checkpoint at step {self.step} (epoch {self.epoch + 1})")
        self.runner = loop.StepRunner(
            task,
            self.model,
            self.optimizer,
            strategy,
            coordinator,
            global_batch=self.global_batch,
            total_steps=opts.epochs * self.steps_per_epoch,
            one_process=coordinator is None and cfg.strategy == "default",
            resume_step=self.step,
        )
        self.evaluate = task.evaluation(self.model)
        self.reporting = Reporting(self) if cfg.is_chief else None

    def _restore_what_the_chief_restores(self, strategy: tf.distribute.Strategy) -> int:
        """Restore the latest checkpoint; under mirrored workers, the same one on every worker.

        Each mirrored worker reads the pointer on its own, and only the chief claims the model dir:
        an old chief that publishes between a worker's read and the claim (its SIGTERM checkpoint)
        leaves that worker on an older step than the chief. The replicas would then train from
        different weights, unseen. So the workers compare their steps in a collective; after the
        claim (the collective waits for it) the pointer holds still, and a worker that differs reads
        it again.
        """
        step = self.checkpoints.restore_latest()
        if self.cfg.strategy != "multi_worker_mirrored" or self.replicas == 1 or _same_everywhere(strategy, step):
            return step
        if not self.cfg.is_chief:
            log.warning(
                f"restored step {step}, which the chief did not: the model dir changed meanwhile; restoring again"
            )
            step = self.checkpoints.restore_latest()
        if not _same_everywhere(strategy, step):
            raise StorageUnavailable(
                f"{self.opts.model_dir}: the workers restored different checkpoints twice; restarting to read it again"
            )
        return step

    def train(self) -> None:
        """Every epoch left, each saved and reported at its end; Preempted after SIGTERM."""
        while self.epoch < self.opts.epochs:
            record = self.train_epoch()
            if self.reporting:
                self.reporting.epoch(record)
            self.save()
            if self.preempted.is_set():
                raise Preempted()
        if self.cfg.is_chief and self.checkpoints.count:
            count, waited = self.checkpoints.count, self.checkpoints.waited
            log.info(
                f"{count} checkpoints saved; training waited {waited:.1f}s for them "
                f"({1000 * waited / count:.0f} ms each)"
            )

    def train_epoch(self) -> dict:
        """Train one epoch, saving every --checkpoint-every-steps; its row, without validation yet."""
        opts, steps_per_epoch = self.opts, self.steps_per_epoch
        started, epoch_end, block_totals = time.monotonic(), (self.epoch + 1) * steps_per_epoch, []
        first_step, last_said = self.step, started
        while self.step < epoch_end:
            next_save = (self.step // opts.checkpoint_every_steps + 1) * opts.checkpoint_every_steps
            steps = min(opts.steps_per_execution, epoch_end - self.step, next_save - self.step)
            block_totals.append(self.runner.run(self.step, steps))
            self.step += steps
            if self.step == next_save and self.step < epoch_end:
                self.save()
            # SIGTERM in an epoch's last block: the epoch is finished, so it is counted and saved
            # by the caller before the chief leaves, or its row would be lost (the restart begins the next one).
            if self.preempted.is_set() and self.step < epoch_end:
                self.save()
                raise Preempted()
            if self.cfg.is_chief and time.monotonic() - last_said > PROGRESS_EVERY:
                last_said = time.monotonic()
                rate = (self.step - first_step) / (last_said - started)
                log.info(
                    f"epoch {self.epoch + 1}/{opts.epochs}: step {self.step - self.epoch * steps_per_epoch}/"
                    f"{steps_per_epoch}, about {(opts.epochs * steps_per_epoch - self.step) / rate:.0f}s left"
                )
        self.runner.join()
        means = self.task.means(loop.fetch_totals(block_totals, len(self.task.names) + 1))
        seconds = time.monotonic() - started
        readings.mark(self.step, seconds)
        self.epoch += 1
        return {
            "epoch": self.epoch,
            "step": self.step,
            **means,
            "seconds": seconds,
            "examples_per_sec": (self.step - first_step) * self.global_batch / seconds,
        }

    def save(self) -> None:
        self.runner.join()  # the blocks scheduled so far are in the variables saved
        self.checkpoints.save(self.step)


class Checkpoints:
    """The training state's checkpoints: the latest one restored, new ones saved and published,
    and how long training waited for them."""

    def __init__(
        self,
        opts: TrainOptions,
        cfg: TFConfig,
        model_dir: ModelDir,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        io_on_chief: bool,
    ):
        self.opts, self.cfg, self.model_dir = opts, cfg, model_dir
        # The chief counts finished steps itself: the optimizer's own counter lives on the parameter
        # servers, where concurrent workers' increments can be lost.
        self.step_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step_counter)
        # Only the chief keeps checkpoints; other mirrored workers must still take part in saving.
        self.folder = model_dir.path / "checkpoints" if cfg.is_chief else pathlib.Path(tempfile.mkdtemp())
        # Under ParameterServerStrategy each ps saves and restores its own variables, at the path it is
        # given; the chief's folder exists on the chief's disk only (a pod of its own), so the chief
        # does the file I/O for everyone.
        self.io = tf.train.CheckpointOptions(experimental_io_device=CHIEF_CPU) if io_on_chief else None
        self.count = 0
        self.waited = 0.0

    def restore_latest(self) -> int:
        """Restore the latest checkpoint, if any; the step it was saved at (0: none).

        Mirrored workers start from the chief's checkpoint, as the chief does; neither resumes a run
        that --restart discards (see pml_trainer.fingerprint). run.json makes a checkpoint of another
        network rare; a model dir from before it, or a hand-edited one, may still hold one: that is
        refused in one line, not a traceback.
        """
        latest = self.model_dir.latest_checkpoint() if fingerprint.resumes(self.opts) else None
        # Made after latest_checkpoint(), which may rewrite the folder's pointer (a staged checkpoint
        # adopted, see ModelDir.latest_checkpoint): the manager reads that pointer once, when made.
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.folder), max_to_keep=self.opts.keep_checkpoints
        )
        if not latest:
            return 0
        try:
            self.checkpoint.restore(latest, options=self.io).assert_consumed()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as err:
            problem = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise fingerprint.Mismatch(
                f"--model-dir {self.opts.model_dir}: checkpoint {pathlib.Path(latest).name} does not fit this model "
                f"({problem}): use another --model-dir, or --restart to discard that run and start afresh"
            ) from None
        return int(self.step_counter.numpy())

    def save(self, step: int) -> None:
        began = time.monotonic()
        if self.cfg.is_chief and not self.count:
            # What defines this run goes beside its first checkpoint (and before it, remotely: uploads
            # keep their order), so that no checkpoint is ever there without it.
            fingerprint.write(self.opts, self.model_dir.path)
            self.model_dir.publish_record(fingerprint.FILE, fingerprint.other_run(self.opts))
        self.step_counter.assign(step)
        saved = self.manager.save(checkpoint_number=step, options=self.io)
        if self.cfg.is_chief:
            self.model_dir.publish_checkpoint(pathlib.Path(saved).name)
            faults.hold_training(step)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.count += 1
        self.waited += time.monotonic() - began


class Reporting:
    """The chief's account of training: its header, then each epoch's row with the validation
    figures, in metrics.jsonl, TensorBoard's events and the log, published after every epoch."""

    def __init__(self, controller: Controller):
        opts, model_dir = controller.opts, controller.model_dir
        self.epochs, self.model_dir, self.evaluate = opts.epochs, model_dir, controller.evaluate
        self.validation = controller.task.validation_data()
        self.writer = tf.summary.create_file_writer(str(model_dir.path / "logs" / "train"))
        model_dir.fetch("metrics.jsonl")
        self.metrics = epoch_report.MetricsLog(model_dir.path / "metrics.jsonl", resume_epoch=controller.epoch)
        self.names = controller.task.names
        log.info(
            f"training {controller.task.describe()}, {controller.cfg.describe()}: "
            f"{controller.steps_per_epoch} steps per epoch of {controller.global_batch} examples"
        )
        if controller.global_batch != opts.batch_size:
            replicas = controller.replicas
            log.info(
                f"--batch-size {opts.batch_size} does not split evenly over {replicas} mirrored replicas; "
                f"each takes {controller.global_batch // replicas}, so a step trains on {controller.global_batch}"
            )
        print(epoch_report.header(self.names), flush=True)

    def epoch(self, record: dict) -> None:
        row = {key: value for key, value in record.items() if key not in ("seconds", "examples_per_sec")}
        if self.validation is not None:
            row.update({f"val_{name}": value for name, value in self.evaluate(self.validation).items()})
        row.update(seconds=record["seconds"], examples_per_sec=record["examples_per_sec"])  # the time after
        print(epoch_report.row(row, self.epochs, self.names), flush=True)
        self.metrics.append(row)
        with self.writer.as_default(step=row["step"]):
            for key, value in row.items():
                if key not in ("epoch", "step"):
                    epoch_report.scalar(key, value, row["step"])
        self.writer.flush()
        self.model_dir.publish("metrics.jsonl")
        self.model_dir.publish("logs/train")
