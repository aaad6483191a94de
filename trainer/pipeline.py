"""From a task's examples to what the loop consumes: shuffled, repeated, batched and prefetched
training batches, and finite evaluation batches. A task gives unbatched (features, label)
examples and never does any of this itself.

An epoch is a number of steps, not a pass that ends when the data does: every input pipeline
repeats its examples endlessly, so finite, endless and uneven data all train under every
strategy, and no mirrored worker waits on an uneven last batch (tensorflow#36153).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pml_trainer.errors import BadInput
from pml_trainer.log import log

SHUFFLE_BUFFER = 10_000
IN_MEMORY_BYTES = 512 * 1024 * 1024  # a split up to this size is cached as one tensor


def training_stream(
    examples: Callable[[int, int], tf.data.Dataset],
    per_replica_batch: int,
    seed: int | None,
    resume_step: int = 0,
    augment: bool = False,
) -> Callable[..., tf.data.Dataset]:
    """A function giving the endless, shuffled, batched training stream of one input pipeline,
    from `examples(count, index)`, that pipeline's share of the examples.

    `tf.distribute` calls it once per pipeline with an `InputContext`; with several pipelines
    (MultiWorkerMirroredStrategy) each one reads its own share. ParameterServerStrategy gives
    every worker the whole data, so there `seed` is None and each worker draws its own order,
    or they would all push the same gradients at the same time; nothing needs to be repeatable
    there, so parallel stages may also hand on whatever is ready first. A resumed run draws
    another order than the one it began with, so that restarts do not favour the first batches.
    """

    def make(context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        count, index = (context.num_input_pipelines, context.input_pipeline_id) if context else (1, 0)
        ds = examples(count, index)
        if seed is None:
            shuffle_seed = tf.cast(tf.timestamp() * 1e6, tf.int64) % (1 << 31)
        else:
            shuffle_seed = seed + index + 7919 * resume_step
        if tf.executing_eagerly():
            size = _in_memory_size(ds)
        else:  # traced (ParameterServerStrategy): a size is read from an eager copy of the dataset
            with tf.init_scope():
                size = _in_memory_size(examples(count, index))
        # Fewer examples than a batch: a pass of whole batches would hold none, and the stream
        # would never yield one; the repeated stream below fills batches across passes.
        if size is not None and size >= per_replica_batch:
            ds = _batches_from_memory(ds, size, per_replica_batch, shuffle_seed)
        else:
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed).repeat()
            ds = ds.batch(per_replica_batch, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
        if augment:  # after the cache, so that each pass draws new variations
            ds = ds.map(_vary, num_parallel_calls=tf.data.AUTOTUNE)
        if seed is None:
            options = tf.data.Options()
            options.deterministic = False
            ds = ds.with_options(options)
        return ds.prefetch(tf.data.AUTOTUNE)

    return make


def checked(ds, what: str) -> tf.data.Dataset:
    """`ds` if it is a dataset of (features, label) examples, unbatched as far as can be told."""
    if not isinstance(ds, tf.data.Dataset):
        raise BadInput(f"{what} returned {type(ds).__name__}; return a tf.data.Dataset of (features, label) examples")
    if not isinstance(ds.element_spec, tuple) or len(ds.element_spec) != 2:
        raise BadInput(f"{what}: each element must be a (features, label) pair, not {ds.element_spec}")
    return ds


def count(ds: tf.data.Dataset, what: str) -> int:
    """How many examples a finite dataset holds: its cardinality when known, else counted."""
    known = int(ds.cardinality())
    if known == tf.data.INFINITE_CARDINALITY:
        raise BadInput(f"{what} is endless: define EXAMPLES_PER_EPOCH in the task, the examples an epoch trains on")
    if known >= 0:
        if known == 0:
            raise BadInput(f"{what} gave no examples; check where it reads its data from")
        return known
    log.info(f"counting the examples of {what} once, for the steps of an epoch (EXAMPLES_PER_EPOCH skips this)")
    counted = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
    if counted == 0:
        raise BadInput(f"{what} gave no examples; check where it reads its data from")
    return counted


def evaluation_batches(ds: tf.data.Dataset | None, batch_size: int) -> tf.data.Dataset | None:
    """A finite split in batches, cached when it is small: the chief evaluates it after every epoch."""
    if ds is None:
        return None
    batches = ds.batch(batch_size)
    if _in_memory_size(ds) is not None:
        batches = batches.cache()
    return batches.prefetch(tf.data.AUTOTUNE)


def _in_memory_size(ds: tf.data.Dataset) -> int | None:
    """The examples of a finite dataset of fixed-shape numbers small enough to hold in memory
    (fashion_mnist, not a folder of photos nor a bucket of records), else None."""
    size = int(ds.cardinality())
    if size <= 0:
        return None
    per_example = 0
    for spec in tf.nest.flatten(ds.element_spec):
        if not isinstance(spec, tf.TensorSpec) or not spec.shape.is_fully_defined() or spec.dtype == tf.string:
            return None
        per_example += spec.shape.num_elements() * spec.dtype.size
    return size if size * per_example <= IN_MEMORY_BYTES else None


def _batches_from_memory(ds: tf.data.Dataset, size: int, batch: int, seed) -> tf.data.Dataset:
    """The whole split as one cached tensor, and each pass a new permutation of it, gathered a batch
    at a time: a stage per batch, not per example, runs at about three times the examples/s of
    cache, shuffle and batch per example, which on 2 cores took a good part of a core from training
    (bench/RESULTS.md, "Input pipelines alone"). A pass drops its last, incomplete batch."""
    whole = ds.batch(size).cache().repeat()

    def one_pass(examples, index):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), index])
        )
        batches = tf.reshape(order[: size // batch * batch], [-1, batch])
        return tf.data.Dataset.from_tensor_slices(batches).map(
            lambda i: tf.nest.map_structure(lambda part: tf.gather(part, i), examples)
        )

    return tf.data.Dataset.zip((whole, tf.data.Dataset.counter())).flat_map(one_pass)


def _vary(images, labels):
    """A batch, each image flipped left-right at random and its contrast scaled by its own factor
    from 0.8 to 1.2. `tf.image.random_contrast` draws one factor per call, so here the formula of
    `tf.image.adjust_contrast` (tensorflow/python/ops/image_ops_impl.py: per channel,
    (x - mean) * factor + mean) is applied with a factor per image."""
    images = tf.image.random_flip_left_right(images)  # a 4-D batch: each image decided on its own
    factor = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], 0.8, 1.2)
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((images - mean) * factor + mean, 0.0, 1.0), labels
