"""The task: what is trained and how it is scored. The model, its optimizer and learning rate,
the loss, the metrics and the data, built here once for the chief's loop (pml_trainer.loop), its
validation and test evaluations, and the evaluator (pml_trainer.evaluator): a metric is added in this
file alone.

The shape follows TF Model Garden's `official/core/base_task.py` (build_model, build_inputs,
build_losses, build_metrics, create_optimizer): the study's MLP and CNN are one implementation
of it, the one user-supplied functions will replace (issue 24).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from pml_trainer import data, models
from pml_trainer.options import TrainOptions

# What a batch is scored on: `Task.totals` sums these over its examples, and `Task.means` turns
# the sums of any number of batches into one figure each, under these names (metrics.jsonl's
# "loss" and "accuracy", "val_loss" after validation, "test_loss" in eval.jsonl and result.json).
METRICS = ("loss", "accuracy")


class Task:
    """The study's classification task on one dataset, configured by the trainer's flags."""

    def __init__(self, opts: TrainOptions, splits: data.Splits | None = None):
        self.opts = opts
        self.splits = splits if splits is not None else data.load(opts)
        # Per example: the replicas average it over the global batch (see `scored`).
        self._per_example_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def build_model(self) -> keras.Model:
        return models.build(self.opts, self.splits.input_shape, self.splits.num_classes)

    def build_optimizer(self, model: keras.Model) -> keras.optimizers.Optimizer:
        """Adam, its slots made now: a checkpoint restored before the first step must find them."""
        optimizer = keras.optimizers.Adam(self.opts.learning_rate)
        optimizer.build(model.trainable_variables)
        return optimizer

    def learning_rate(self, total_steps: int) -> Callable | None:
        """The rate at a step, for --lr-decay cosine; None keeps the optimizer's."""
        if self.opts.lr_decay != "cosine":
            return None
        return keras.optimizers.schedules.CosineDecay(self.opts.learning_rate, total_steps)

    def train_data(self, per_replica_batch: int, seed: int | None) -> Callable[..., tf.data.Dataset]:
        """The endless training stream of one input pipeline (see `data.training_stream`)."""
        return data.training_stream(self.splits, per_replica_batch, seed, self.opts.augment)

    def validation_data(self) -> tf.data.Dataset | None:
        return data.evaluation_batches(self.splits.validation)

    def test_data(self) -> tf.data.Dataset:
        return data.evaluation_batches(self.splits.test)

    def totals(self, logits, y):
        """A batch's per-example loss, and the sums behind each of METRICS with the examples last."""
        per_example = self._per_example_loss(y, logits)
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        return per_example, tf.stack([tf.reduce_sum(per_example), tf.reduce_sum(hits), tf.cast(tf.size(y), tf.float32)])

    def scored(self, logits, y, global_batch: int):
        """A replica's loss to differentiate (its share of the global batch's mean), and its totals."""
        per_example, totals = self.totals(logits, y)
        return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch), totals

    @staticmethod
    def zero_totals() -> tf.Tensor:
        return tf.zeros(len(METRICS) + 1)

    @staticmethod
    def means(totals) -> dict[str, float]:
        """Each metric's mean over the examples that `totals` (a sum of `totals`) counted."""
        *sums, seen = (float(v) for v in totals)
        return {name: value / max(seen, 1.0) for name, value in zip(METRICS, sums, strict=False)}

    def evaluation(self, model: keras.Model) -> Callable[[tf.data.Dataset], dict[str, float]]:
        """A function scoring `model` on a finite dataset of batches: each metric's mean."""

        @tf.function
        def batch_totals(x, y):
            return self.totals(model(x, training=False), y)[1]

        def evaluate(batches: tf.data.Dataset) -> dict[str, float]:
            totals = self.zero_totals()
            for x, y in batches:
                totals += batch_totals(x, y)
            return self.means(totals.numpy())

        return evaluate
