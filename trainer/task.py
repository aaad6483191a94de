"""The task: what is trained and how it is scored, from a task module (the user's, or the built-in
`pml_trainer.tasks.image`). The loop (pml_trainer.loop), its validation and test evaluations,
the evaluator (pml_trainer.evaluator) and the export see only this class.

A task module's functions are the contract of docs/your-model.md: `model(params)` and
`train_data(params, shard)`, and optionally `eval_data`, `validation_data`, `loss`, `metrics`,
`optimizer`, `serving` and `EXAMPLES_PER_EPOCH`. The shape follows TF Model Garden's
`official/core/base_task.py` (build_model, build_inputs, build_losses, build_metrics,
create_optimizer).

Metrics are known by their own names: "loss" and each metric's `name`, as metrics.jsonl, the
epoch table, TensorBoard, eval.jsonl and result.json show them (with val_ and test_ prefixes).
"""

from __future__ import annotations

import pathlib
import types
from collections.abc import Callable

import keras
import tensorflow as tf

from pml_trainer import export, pipeline, shard, task_code
from pml_trainer.errors import BadInput
from pml_trainer.options import TrainOptions
from pml_trainer.tasks import image


class Task:
    def __init__(self, opts: TrainOptions, module: types.ModuleType | None = None):
        self.opts = opts
        self.module = module if module is not None else task_code.load(opts)
        builtin = opts.task is None
        self.params = {name: getattr(opts, name) for name in image.PARAMS} if builtin else dict(opts.params)
        shard.where = (str(task_code.workspace(opts)), opts.s3_endpoint)
        self._per_example = self._per_example_loss()
        # Each metric's state from zeros, per batch: training sums batches' results weighted by
        # their examples, with no metric variable to place on a device (see `totals`).
        self._stateless = [(m, [tf.zeros(v.shape, v.dtype) for v in m.variables]) for m in self._metrics()]
        self.names = ("loss", *(m.name for m, _ in self._stateless))

    def describe(self) -> str:
        if self.opts.task is None:
            return f"{self.opts.model} on {self.opts.dataset}"
        return f"task {self.opts.task}"

    # --- the model and its optimizer ---------------------------------------------------------

    def build_model(self) -> keras.Model:
        built = self.module.model(self.params)
        if not isinstance(built, keras.Model):
            raise BadInput(f"{self._name('model')} returned {type(built).__name__}, not a keras.Model")
        return built

    def built_model(self) -> keras.Model:
        """The task's model with its variables made: a subclassed model makes them on its first
        call, and the optimizer and checkpoints need them before the first step."""
        built = self.build_model()
        if not built.built or not built.weights:
            spec = self._whole().element_spec[0]
            if not all(s.shape.is_fully_defined() for s in tf.nest.flatten(spec)):
                raise BadInput(
                    f"{self._name('train_data')}: features of a size unknown until they are read ({spec}) cannot "
                    "build a model that declares no inputs; give the model a keras.Input, or pad the features"
                )
            built(tf.nest.map_structure(lambda s: tf.zeros([1, *s.shape], s.dtype), spec), training=False)
        return built

    def build_optimizer(self, model: keras.Model) -> keras.optimizers.Optimizer:
        """The task's optimizer, else Adam at --learning-rate; its slots made now: a checkpoint
        restored before the first step must find them."""
        if hasattr(self.module, "optimizer"):
            optimizer = self.module.optimizer(self.params)
            if self.opts.lr_decay != "none" and not isinstance(optimizer.learning_rate, tf.Variable):
                raise BadInput(
                    f"{self._name('optimizer')} schedules its own learning rate, and so does --lr-decay "
                    f"{self.opts.lr_decay}: drop one of them"
                )
        else:
            optimizer = keras.optimizers.Adam(self.opts.learning_rate)
        optimizer.build(model.trainable_variables)
        return optimizer

    def learning_rate(self, total_steps: int) -> Callable | None:
        """The rate at a step, for --lr-decay cosine; None keeps the optimizer's."""
        if self.opts.lr_decay != "cosine":
            return None
        return keras.optimizers.schedules.CosineDecay(self.opts.learning_rate, total_steps)

    # --- data --------------------------------------------------------------------------------

    def train_data(self, per_replica_batch: int, seed: int | None, resume_step: int = 0):
        """The endless training stream of one input pipeline (see `pipeline.training_stream`)."""

        def examples(count: int, index: int) -> tf.data.Dataset:
            share = shard.Shard(count, index, **self._shard_settings(resume_step))
            ds = self._examples(share)
            return ds if share.split_by_file else ds.shard(count, index)

        return pipeline.training_stream(examples, per_replica_batch, seed, resume_step, self.opts.augment)

    def examples_per_epoch(self) -> int:
        """EXAMPLES_PER_EPOCH, else the examples train_data gives, counted once."""
        declared = getattr(self.module, "EXAMPLES_PER_EPOCH", None)
        if declared is not None:
            if not isinstance(declared, int) or declared < 1:
                raise BadInput(f"{self._name('EXAMPLES_PER_EPOCH')} must be a whole number above 0, not {declared!r}")
            return declared
        return pipeline.count(self._whole(), self._name("train_data"))

    def fetch_files(self) -> None:
        """Fetch the files the training data reads to this machine (a parameter-server worker, which
        runs the pipeline the chief built), by building that pipeline's examples once."""
        self._whole()

    def validation_data(self) -> tf.data.Dataset | None:
        """Validation after each epoch: validation_data(params), else eval_data(params)."""
        for name in ("validation_data", "eval_data"):
            if hasattr(self.module, name):
                return pipeline.evaluation_batches(self._finite(name), self.opts.batch_size)
        return None

    def test_data(self) -> tf.data.Dataset | None:
        """The final test and the evaluator: eval_data(params)."""
        if not hasattr(self.module, "eval_data"):
            return None
        return pipeline.evaluation_batches(self._finite("eval_data"), self.opts.batch_size)

    def _examples(self, share: shard.Shard) -> tf.data.Dataset:
        return pipeline.checked(self.module.train_data(self.params, share), self._name("train_data"))

    def _whole(self) -> tf.data.Dataset:
        """Every training example, as one reader would get them all."""
        return self._examples(shard.Shard(1, 0, **self._shard_settings(0)))

    def _finite(self, name: str) -> tf.data.Dataset | None:
        ds = getattr(self.module, name)(self.params)
        if ds is None:
            return None
        ds = pipeline.checked(ds, self._name(name))
        if ds.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise BadInput(f"{self._name(name)} is endless; evaluation needs a finite dataset (drop its repeat())")
        return ds

    def _shard_settings(self, resume_step: int) -> dict:
        return {
            "seed": f"{self.opts.seed}-{resume_step}",
            "workspace": str(task_code.workspace(self.opts)),
            "s3_endpoint": self.opts.s3_endpoint,
        }

    # --- scores ------------------------------------------------------------------------------

    def _per_example_loss(self) -> Callable:
        loss = (
            self.module.loss(self.params)
            if hasattr(self.module, "loss")
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        if isinstance(loss, keras.losses.Loss):
            # Per example: the replicas average it over the global batch (see `scored`).
            loss.reduction = None
        elif not callable(loss):
            raise BadInput(f"{self._name('loss')} returned {type(loss).__name__}, not a keras.losses.Loss")

        def per_example(y, predictions):
            values = tf.cast(loss(y, predictions), tf.float32)
            if values.shape.rank and values.shape.rank > 1:  # per time step, per pixel: one per example
                values = tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)
            return values

        return per_example

    def _metrics(self) -> list[keras.metrics.Metric]:
        if not hasattr(self.module, "metrics"):
            return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        metrics = list(self.module.metrics(self.params))
        names = [getattr(m, "name", None) for m in metrics]
        if not all(isinstance(m, keras.metrics.Metric) for m in metrics):
            raise BadInput(f"{self._name('metrics')} must return a list of keras.metrics.Metric")
        if "loss" in names or len(set(names)) != len(names):
            raise BadInput(f"{self._name('metrics')}: each metric needs a name of its own, other than loss: {names}")
        return metrics

    def totals(self, predictions, y):
        """A batch's per-example loss, and its totals: the loss summed, each metric's result on the
        batch times its examples, and the examples last."""
        per_example = self._per_example(y, predictions)
        examples = tf.cast(tf.shape(per_example)[0], tf.float32)
        values = [tf.reduce_sum(per_example)]
        for metric, zeros in self._stateless:
            state = metric.stateless_update_state(zeros, y, predictions)
            values.append(tf.cast(metric.stateless_result(state), tf.float32) * examples)
        return per_example, tf.stack([*values, examples])

    def scored(self, predictions, y, global_batch: int):
        """A replica's loss to differentiate (its share of the global batch's mean), and its totals."""
        per_example, totals = self.totals(predictions, y)
        return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch), totals

    def zero_totals(self) -> tf.Tensor:
        return tf.zeros(len(self.names) + 1)

    def means(self, totals) -> dict[str, float]:
        """Each metric's mean over the examples that `totals` (a sum of `totals`) counted."""
        *sums, seen = (float(v) for v in totals)
        return {name: value / max(seen, 1.0) for name, value in zip(self.names, sums, strict=True)}

    def evaluation(self, model: keras.Model) -> Callable[[tf.data.Dataset], dict[str, float]]:
        """A function scoring `model` on a finite dataset of batches: the mean loss and each
        metric's result over all of it, exact (the metrics keep their state across batches)."""
        metrics = self._metrics()

        @tf.function
        def batch_totals(x, y):
            predictions = model(x, training=False)
            for metric in metrics:
                metric.update_state(y, predictions)
            per_example = self._per_example(y, predictions)
            return tf.reduce_sum(per_example), tf.cast(tf.shape(per_example)[0], tf.float32)

        def evaluate(batches: tf.data.Dataset) -> dict[str, float]:
            for metric in metrics:
                metric.reset_state()
            loss = seen = 0.0
            for x, y in batches:
                batch_loss, examples = batch_totals(x, y)
                loss, seen = loss + float(batch_loss), seen + float(examples)
            return {"loss": loss / max(seen, 1.0), **{m.name: float(m.result()) for m in metrics}}

        return evaluate

    # --- the SavedModel ----------------------------------------------------------------------

    def export(self, model: keras.Model, export_dir: pathlib.Path) -> None:
        signatures = self.module.serving(model) if hasattr(self.module, "serving") else None
        features = None
        if signatures is None and not getattr(model, "inputs", None):
            spec = self._whole().element_spec[0]
            features = tf.nest.map_structure(lambda s: tf.TensorSpec([None, *s.shape], s.dtype), spec)
        export.save(model, export_dir, signatures, features)

    def _name(self, function: str) -> str:
        where = self.opts.task or "the built-in task"
        return f"{where}: {function}" + ("" if function.isupper() else "()")
