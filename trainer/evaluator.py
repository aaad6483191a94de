"""Evaluation: the function the chief uses on its validation and test splits, and the
evaluator role, a sidecar that evaluates each new checkpoint without joining the cluster.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal

import keras
import tensorflow as tf

from trainer import control, data, exits, models, report
from trainer.model_dir import ModelDir
from trainer.options import TrainOptions
from trainer.report import say
from trainer.storage import StorageError
from trainer.tf_config import TFConfig, control_address


def make_evaluate_fn(model: keras.Model, loss_fn):
    @tf.function
    def evaluate_batch(x, y):
        logits = model(x, training=False)
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        return tf.stack([tf.reduce_sum(loss_fn(y, logits)), tf.reduce_sum(hits), tf.cast(tf.size(y), tf.float32)])

    return evaluate_batch


def evaluate(evaluate_fn, batches: tf.data.Dataset) -> tuple[float, float]:
    """Mean loss and accuracy over a finite dataset of batches."""
    totals = tf.zeros(3)
    for x, y in batches:
        totals += evaluate_fn(x, y)
    loss_sum, hits, seen = (float(v) for v in totals.numpy())
    return loss_sum / max(seen, 1.0), hits / max(seen, 1.0)


def run(opts: TrainOptions, cfg: TFConfig) -> int:
    """Evaluate every new checkpoint on the test split until the chief says training is over."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(exits.OK))  # nothing to save: just leave
    outputs = ModelDir(opts.model_dir, opts.s3_endpoint, f"evaluator-{cfg.task_index}", opts.keep_checkpoints)
    outputs.fetch("eval.jsonl")
    model_dir = outputs.path
    splits = data.load(opts)
    model = models.build(opts, splits.input_shape, splits.num_classes)
    checkpoint = tf.train.Checkpoint(model=model)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    evaluate_fn = make_evaluate_fn(model, loss_fn)
    test = data.evaluation_batches(splits.test)
    writer = tf.summary.create_file_writer(str(model_dir / "logs" / "eval"))
    done: set[str] = set()
    unreachable = [False]  # warn once per outage, not at every poll

    def evaluate_latest() -> None:
        try:
            latest = outputs.latest_checkpoint()
        except StorageError as err:
            if not unreachable[0]:
                say(f"warning: {err}; trying again at every poll")
            unreachable[0] = True
            return
        if unreachable[0]:
            say(f"storage {outputs.uri} answers again")
            unreachable[0] = False
        if latest is None or latest in done:
            return
        try:
            checkpoint.restore(latest).expect_partial()
        except (tf.errors.NotFoundError, tf.errors.DataLossError):
            return  # the chief pruned it meanwhile; the next poll sees a newer one
        done.add(latest)
        step = int(latest.rpartition("-")[2])
        loss, accuracy = evaluate(evaluate_fn, test)
        record = {"step": step, "test_loss": loss, "test_accuracy": accuracy, "checkpoint": outputs.where(f"checkpoints/{pathlib.Path(latest).name}")}
        with open(model_dir / "eval.jsonl", "a") as out:
            out.write(json.dumps(record) + "\n")
        with writer.as_default(step=step):
            report.scalar("test_loss", loss, step)
            report.scalar("test_accuracy", accuracy, step)
        writer.flush()
        outputs.publish("eval.jsonl")
        outputs.publish("logs/eval")
        say(f"evaluated {pathlib.Path(latest).name}: test loss {loss:.4f}, accuracy {accuracy:.4f}")

    host, port = control_address(cfg.chief_address)
    final = control.wait_for_end(host, port, f"evaluator:{cfg.task_index}", opts.orphan_timeout,
                                 on_poll=evaluate_latest)
    evaluate_latest()
    outputs.close()
    return exits.OK if final == control.DONE else exits.CHIEF_FAILED
