"""The training loop: one replica step for the default, multi-worker and parameter-server
strategies, run in blocks of `--steps-per-execution` steps, each block one `tf.function` call.

As Orbit's `StandardTrainer` (orbit/standard_runner.py) runs `train_step` in a loop of
`num_steps` inside one function, and leaves when to run it to the controller (pml_trainer.controller).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from pml_trainer.errors import BadInput
from pml_trainer.task import Task
from pml_trainer.tf_config import TFConfig

# With --jit in one process, XLA compiles this many steps unrolled into one program. Unrolled: the
# same steps as an XLA while loop over a tensor of batches ran at a third of the speed; more steps
# per program compile for longer (bench/RESULTS.md, "Trainer throughput").
UNROLLED_STEPS = 10


def distribution(cfg: TFConfig):
    """The strategy for this cluster, and the coordinator when there are parameter servers."""
    if cfg.strategy == "default":
        return tf.distribute.get_strategy(), None
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cfg.training_cluster), task_type=cfg.task_type, task_id=cfg.task_index, rpc_layer="grpc"
    )
    if cfg.strategy == "parameter_server":
        strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
        return strategy, tf.distribute.coordinator.ClusterCoordinator(strategy)
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver), None


class StepRunner:
    """Runs training steps a block at a time: one `tf.function` call per block, which
    ClusterCoordinator sends to a worker under ParameterServerStrategy and which runs in place
    under the other strategies.

    With --jit, XLA compiles as much of a block as the strategy allows. In one process, that is the
    whole block: its steps unrolled into one program, the optimizer's updates included. Under the
    other strategies, it is each replica's forward and backward pass (see `_compiled_gradients`).
    """

    def __init__(
        self,
        task: Task,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        strategy: tf.distribute.Strategy,
        coordinator: tf.distribute.coordinator.ClusterCoordinator | None,
        *,
        global_batch: int,
        total_steps: int,
        one_process: bool,
        resume_step: int = 0,
    ):
        opts = task.opts
        # The rate follows the chief's step count, not the optimizer's counter (see pml_trainer.controller).
        decay = task.learning_rate(total_steps)
        replicas = strategy.num_replicas_in_sync
        whole_block_compiled = opts.compiles() and one_process
        if opts.compiles() and not one_process and model.non_trainable_variables:
            # The compiled pass runs stateless on the variables' values (see `_compiled_gradients`):
            # the moving statistics of a BatchNormalization would never be updated.
            raise BadInput(
                f"--jit: {model.name} has state that training updates besides its weights "
                f"({model.non_trainable_variables[0].path}, ...), which XLA cannot update under a distributed "
                "strategy here; drop --jit"
            )
        gradients = (_compiled_gradients if opts.compiles() and not one_process else _gradients)(
            task, model, global_batch
        )

        def replica_step(x, y):
            grads, totals = gradients(x, y)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=False))
            return totals

        def step(x, y):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, (x, y)), axis=None)

        if whole_block_compiled:
            chunk = min(opts.steps_per_execution, UNROLLED_STEPS)

            @tf.function(jit_compile=True)
            def compiled_steps(batches):
                totals = task.zero_totals()
                for x, y in batches:
                    totals += step(x, y)
                return totals

            def steps_of_block(iterator, steps):
                """Chunks of steps, each one XLA program with its batches as arguments (XLA cannot
                compile the iterator), then what is left one step at a time: two programs to
                compile, whatever lengths blocks are cut to by checkpoints and epochs' ends."""
                totals = task.zero_totals()
                for _ in tf.range(steps // chunk):
                    totals += compiled_steps([next(iterator) for _ in range(chunk)])
                for _ in tf.range(steps % chunk):
                    totals += compiled_steps([next(iterator)])
                return totals
        else:

            def steps_of_block(iterator, steps):
                totals = task.zero_totals()
                for _ in tf.range(steps):
                    totals += step(*next(iterator))
                return totals

        @tf.function
        def train_block(iterator, start, steps):
            """`steps` training steps in one call: one RPC per block under ParameterServerStrategy.

            `steps` is a tensor: as a Python number, each new value (a block cut short by a
            checkpoint or an epoch's end) would trace the function again, for a good fraction of a second.
            """
            if decay is not None:
                optimizer.learning_rate.assign(decay(start))
            return steps_of_block(iterator, steps)

        # ParameterServerStrategy gives every worker the whole data, each in its own order (no seed).
        stream = task.train_data(global_batch // replicas, None if coordinator else opts.seed, resume_step)
        if coordinator:
            self._iterator = iter(
                coordinator.create_per_worker_dataset(lambda: strategy.distribute_datasets_from_function(stream))
            )
            self._train_block = lambda *args: coordinator.schedule(train_block, args=args)
            self.join = coordinator.join
        else:
            self._iterator = iter(strategy.distribute_datasets_from_function(stream))
            self._train_block = train_block
            self.join = lambda: None

    def run(self, start: int, steps: int):
        """Train `steps` steps from step `start`; their summed totals (Task.totals): a tensor, or
        under ParameterServerStrategy a remote value to fetch once `join` has returned."""
        return self._train_block(self._iterator, tf.constant(start, tf.int64), tf.constant(steps))


def fetch_totals(block_totals: list, size: int) -> list[float]:
    """The sum of blocks' totals (`size` numbers each), remote values (ParameterServerStrategy) fetched."""
    total = [0.0] * size
    for value in block_totals:
        value = value.fetch() if hasattr(value, "fetch") else value.numpy()
        total = [a + float(b) for a, b in zip(total, value, strict=False)]
    return total


def _gradients(task: Task, model: keras.Model, global_batch: int):
    """One replica's forward and backward pass: the gradients and the batch's totals."""

    def gradients(x, y):
        with tf.GradientTape() as tape:
            loss, totals = task.scored(model(x, training=True), y, global_batch)
        return tape.gradient(loss, model.trainable_variables), totals

    return gradients


def _compiled_gradients(task: Task, model: keras.Model, global_batch: int):
    """The forward and backward pass compiled by XLA, for the distributed strategies.

    XLA reads a variable only on the device that holds it: the compiled kernel looks each one up
    through `LookupResource`, which refuses a handle of another device ("Trying to access resource
    ... located in device ...", tensorflow/core/framework/resource_mgr.cc, `internal::ValidateDevice`).
    Under ParameterServerStrategy the variables live on the parameter servers, so the worker reads
    their values first and XLA computes on those; the optimizer's update stays outside, where the
    strategy places it (on the servers; after the all-reduce under MultiWorkerMirroredStrategy).
    """

    @tf.function(jit_compile=True)
    def compiled(weights, x, y):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            logits, _ = model.stateless_call(weights, model.non_trainable_variables, x, training=True)
            loss, totals = task.scored(logits, y, global_batch)
        return tape.gradient(loss, weights), totals

    return lambda x, y: compiled([tf.convert_to_tensor(w) for w in model.trainable_variables], x, y)
