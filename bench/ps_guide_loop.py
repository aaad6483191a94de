"""The parameter-server peer of bench/throughput.py: the custom training loop of TensorFlow's guide
"Parameter server training with ParameterServerStrategy" (a ClusterCoordinator scheduling
`tf.function`s of packed steps onto the workers, the variables on the parameter servers),
written from the guide for our data and model, and importing nothing of our trainer.

One process per task, on 127.0.0.1:

    ps_guide_loop.py serve --cluster JSON --role worker|ps --index N   (a server, until killed)
    ps_guide_loop.py train --cluster JSON --batch-size 256 --epochs 6  (the coordinator's loop)

The loop prints one JSON line per epoch with its examples/s. The data is fashion_mnist from the
folder given (the four IDX files), the first 90% of its training images as our trainer's default
split trains on; the model is the default MLP (two hidden layers of 128), Adam at 1e-3.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import struct
import time

import keras
import numpy as np
import tensorflow as tf

TRAIN_FRACTION = 0.9


def read_idx(path: pathlib.Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        _, _, ndim = struct.unpack(">HBB", f.read(4))
        dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(dims)


def serve(cluster: dict, role: str, index: int) -> None:
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=role, task_index=index, protocol="grpc")
    server.join()


def train(cluster: dict, folder: pathlib.Path, batch_size: int, epochs: int, steps_per_invocation: int) -> None:
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type="chief", task_id=0, rpc_layer="grpc"
    )
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)

    images = read_idx(folder / "train-images-idx3-ubyte.gz")
    labels = read_idx(folder / "train-labels-idx1-ubyte.gz").astype(np.int32)
    n_train = int(len(images) * TRAIN_FRACTION)
    images, labels = images[:n_train, ..., np.newaxis], labels[:n_train]

    def dataset_fn(input_context):
        # The guide maps each example, then batches. Mapped per example, this pipeline held the loop
        # to 17.5k examples/s at batch 256 here; mapped per batch (the tf.data performance guide's
        # "vectorized mapping"), it runs at 31k, so the peer maps whole batches.
        batch = input_context.get_per_replica_batch_size(batch_size)
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(10_000).repeat()
        dataset = dataset.batch(batch, drop_remainder=True)
        return dataset.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y)).prefetch(tf.data.AUTOTUNE)

    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        optimizer = keras.optimizers.Adam(1e-3)
        # Keras 3 makes Adam's variables at its first step, inside the step function the coordinator
        # traces, and some of them then land on the coordinator instead of the parameter servers
        # (12.6k against 17.5k examples/s at batch 256). The guide's Keras 2 optimizer made them
        # under the strategy; building the optimizer here does that.
        optimizer.build(model.trainable_variables)
        accuracy = keras.metrics.Accuracy()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    @tf.function
    def step_fn(iterator):
        def replica_fn(batch_data, labels):
            with tf.GradientTape() as tape:
                logits = model(batch_data, training=True)
                loss = tf.nn.compute_average_loss(loss_fn(labels, logits))
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=False))
            accuracy.update_state(labels, tf.argmax(logits, axis=1, output_type=tf.int32))
            return loss

        total = tf.constant(0.0)
        for _ in tf.range(steps_per_invocation):
            batch_data, labels = next(iterator)
            total += strategy.reduce(
                tf.distribute.ReduceOp.SUM, strategy.run(replica_fn, args=(batch_data, labels)), axis=None
            )
        return total

    per_worker_dataset = coordinator.create_per_worker_dataset(
        lambda: strategy.distribute_datasets_from_function(dataset_fn)
    )
    per_worker_iterator = iter(per_worker_dataset)
    invocations = n_train // batch_size // steps_per_invocation
    for epoch in range(epochs):
        started = time.monotonic()
        accuracy.reset_state()
        for _ in range(invocations):
            coordinator.schedule(step_fn, args=(per_worker_iterator,))
        coordinator.join()
        seconds = time.monotonic() - started
        print(
            json.dumps(
                {
                    "epoch": epoch + 1,
                    "accuracy": float(accuracy.result()),
                    "examples_per_sec": invocations * steps_per_invocation * batch_size / seconds,
                }
            ),
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["serve", "train"])
    p.add_argument("--cluster", type=json.loads, required=True, help="JSON: {role: [host:port, ...]}")
    p.add_argument("--role")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--data", type=pathlib.Path, default=pathlib.Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps-per-invocation", type=int, default=10)
    args = p.parse_args()
    if args.what == "serve":
        serve(args.cluster, args.role, args.index)
    else:
        train(args.cluster, args.data, args.batch_size, args.epochs, args.steps_per_invocation)


if __name__ == "__main__":
    main()
