"""Where the time of a mirrored step goes: the all-reduce's share, against the communication
options and the batch.

Starts 3 processes (a chief and 2 workers, MultiWorkerMirroredStrategy over gRPC on 127.0.0.1)
that build the default MLP and time, per step, for each global batch:
  full step        forward, backward, the gradients' all-reduce and Adam's update (as the trainer);
  compute only     forward and backward on each replica, nothing sent, no update;
  all-reduce only  the cross-replica sum of gradient-sized tensors (118 000 floats), nothing else;
under `CommunicationOptions(implementation=AUTO)` and `RING`. The chief prints one table row per
batch and option; "one process" is the full step of the same model without a strategy.

    .venv/bin/python bench/mirrored_steps.py [--batches 32,256,1024] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from throughput import free_ports

IMPLEMENTATIONS = ("AUTO", "RING")


def measure(role: str, index: int, cluster: dict, implementation: str, batches: list[int], steps: int) -> None:
    import keras
    import tensorflow as tf

    if role:
        os.environ["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": role, "index": index}})
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=getattr(tf.distribute.experimental.CommunicationImplementation, implementation)
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    else:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
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
        optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def gradients(x, y, global_batch):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(loss_fn(y, model(x, training=True)), global_batch_size=global_batch)
        return tape.gradient(loss, model.trainable_variables)

    # Each returns a number computed from what it made, so that nothing is pruned from the graph.
    def full(x, y, global_batch):
        optimizer.apply_gradients(zip(gradients(x, y, global_batch), model.trainable_variables, strict=False))
        return tf.constant(0.0)

    def compute(x, y, global_batch):
        return tf.add_n([tf.reduce_sum(g) for g in gradients(x, y, global_batch)])

    def all_reduce(x, y, global_batch):
        context = tf.distribute.get_replica_context()
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [tf.ones_like(v) for v in model.trainable_variables])
        return tf.add_n([tf.reduce_sum(s) for s in summed])

    rows = []
    for global_batch in batches:
        per_replica = global_batch // replicas
        x = tf.random.uniform((per_replica, 28, 28, 1))
        y = tf.random.uniform((per_replica,), maxval=10, dtype=tf.int32)
        row = {"batch": global_batch}
        for name, fn in (("full", full), ("compute", compute), ("all_reduce", all_reduce)):

            @tf.function
            def block(n):
                total = tf.constant(0.0)
                for _ in tf.range(n):
                    total += strategy.experimental_local_results(strategy.run(fn, (x, y, global_batch)))[0]
                return total

            block(tf.constant(10))  # traced and warmed up
            started = time.monotonic()
            block(tf.constant(steps))
            row[name] = 1000 * (time.monotonic() - started) / steps
        rows.append(row)
    if role in ("chief", ""):
        print(json.dumps({"implementation": implementation if role else "one process", "rows": rows}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="32,256,1024")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--task", help=argparse.SUPPRESS)  # role,index,cluster,implementation: one task of the job
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.task:
        role, index, cluster, implementation = json.loads(args.task)
        measure(role, index, cluster, implementation, batches, args.steps)
        return
    results = [
        json.loads(
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--batches",
                    args.batches,
                    "--steps",
                    str(args.steps),
                    "--task",
                    json.dumps(["", 0, {}, ""]),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    ]
    for implementation in IMPLEMENTATIONS:
        ports = free_ports(3)
        cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{p}" for p in ports[1:]]}
        tasks = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--batches",
                    args.batches,
                    "--steps",
                    str(args.steps),
                    "--task",
                    json.dumps([role, i, cluster, implementation]),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for role, i in (("chief", 0), ("worker", 0), ("worker", 1))
        ]
        out = tasks[0].communicate()[0]
        for task in tasks[1:]:
            task.wait()
        results.append(json.loads(out))
    print(
        f"machine: {os.cpu_count()} cores; load average {pathlib.Path('/proc/loadavg').read_text().split()[0]}; "
        f"ms per step, the mean of {args.steps} steps after 10 more"
    )
    print("| global batch | run | full step (ms) | compute only (ms) | all-reduce only (ms) | examples/s (full step) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for result in results:
        for row in result["rows"]:
            print(
                f"| {row['batch']} | {result['implementation']} | {row['full']:.2f} | {row['compute']:.2f} | "
                f"{row['all_reduce']:.2f} | {1000 * row['batch'] / row['full']:.0f} |"
            )


if __name__ == "__main__":
    main()
