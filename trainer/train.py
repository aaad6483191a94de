"""The training loop: one step definition for the default, multi-worker and parameter-server
strategies, with checkpoints every N steps and resumption from the latest one.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import keras
import tensorflow as tf

from trainer import control, cpus, data, durable, epoch_report, exits, export, fingerprint, liveness, models
from trainer.checkpoints import Fenced
from trainer.evaluator import evaluate, make_evaluate_fn
from trainer.model_dir import ModelDir
from trainer.options import TrainOptions
from trainer.log import log
from trainer.storage import StorageError, StorageUnavailable
from trainer.tf_config import TFConfig, control_address

PROGRESS_EVERY = 15.0  # seconds between progress lines within an epoch
CHIEF_CPU = "/job:chief/replica:0/task:0/device:CPU:0"  # the coordinator, in a ParameterServerStrategy cluster
# Before exiting for a restart, the last checkpoint may still be on its way to a remote model
# dir; waiting a little spares the restarted chief some repeated steps. SIGTERM leaves 30 s.
LAST_UPLOAD_SECONDS = 20.0
# With --jit in one process, XLA compiles this many steps unrolled into one program. Unrolled: the
# same steps as an XLA while loop over a tensor of batches ran at a third of the speed; more steps
# per program compile for longer (bench/RESULTS.md, "Trainer throughput").
UNROLLED_STEPS = 10


RETRYABLE_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError)


class Preempted(Exception):
    """SIGTERM arrived; the loop saves a checkpoint and exits for a restart."""


def run(opts: TrainOptions, cfg: TFConfig) -> int:
    peers = _peers_to_tell(cfg)
    host, port = control_address(cfg.chief_address)
    state = control.StateServer(port, peers, host=host) if peers is not None else None
    preempted = _catch_sigterm()
    outputs = ModelDir(opts.model_dir, opts.s3_endpoint, f"{cfg.task_type}-{cfg.task_index}", opts.keep_checkpoints,
                       writer=cfg.is_chief, adopt_staged=cfg.strategy != "multi_worker_mirrored",
                       interrupted=preempted.is_set)
    try:
        if not liveness.wait_for_tasks(cfg, interrupted=preempted.is_set):
            log.info("SIGTERM while waiting for the other tasks; exiting")
            return exits.PREEMPTED
        if cfg.strategy == "parameter_server":
            liveness.keep_alive()  # before the strategy opens its channels
        training_over = liveness.watch_parameter_servers(cfg, lambda reason: os._exit(_lost_a_peer(outputs, reason)))
        final_step = _train(opts, cfg, preempted, outputs)
        training_over.set()  # the servers leave by themselves once told, and must not be missed
    except Preempted:
        _upload_last(outputs)
        log.info("SIGTERM: checkpoint saved; exiting for a restart")
        return exits.PREEMPTED
    except liveness.PeerLost as err:
        return _lost_a_peer(outputs, str(err))
    except RETRYABLE_ERRORS as err:
        return _lost_a_peer(outputs, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
    except Fenced:  # the uploader said why; the peers belong to the chief that took over
        return exits.FENCED
    except StorageUnavailable as err:  # an outage longer than reads wait: the servers wait for a restart
        _upload_last(outputs)
        log.info(f"{err}; exiting for a restart")
        return exits.STORAGE_UNAVAILABLE
    except Exception:
        if state is not None:  # a failure for good: tell the servers, so they stop waiting
            state.finish(control.FAILED, linger=5.0)
        raise
    try:
        outputs.close()
    except Fenced:
        return exits.FENCED
    except StorageError as err:
        # The servers are not told: they wait for the restarted chief, which finishes again.
        log.info(f"{err}; exiting for a restart")
        return exits.PEER_LOST
    if state is not None:
        # Everything is published, the last checkpoint included. The evaluator confirms the end only
        # once that checkpoint's evaluation is in eval.jsonl, so the chief waits for it longer than
        # for servers: once the chief exits, TFJob may delete the evaluator (cleanPodPolicy Running).
        # SIGTERM stops the wait: the job is being deleted anyway, and training is over.
        missing = state.finish(control.DONE, linger=30.0, step=final_step,
                               evaluator_linger=control.FINAL_EVALUATION_SECONDS,
                               interrupted=preempted.is_set)
        evaluator = {peer for peer in missing if peer.startswith("evaluator:")}
        if evaluator:
            why = "SIGTERM came first" if preempted.is_set() else f"not within {control.FINAL_EVALUATION_SECONDS:.0f}s"
            log.warning(f"the evaluator did not confirm its evaluation of the final checkpoint, step "
                f"{final_step} ({why}); eval.jsonl may lack it")
        if missing - evaluator:
            log.warning(f"{', '.join(sorted(missing - evaluator))} did not confirm the end; leaving anyway")
    return exits.OK


def _peers_to_tell(cfg: TFConfig) -> set[str] | None:
    """Tasks that wait for the chief's word that training is over (None: nobody listens)."""
    if not cfg.is_chief or len(sum(cfg.cluster.values(), [])) < 2:
        return None
    waiting = ["evaluator"] if cfg.strategy != "parameter_server" else ["worker", "ps", "evaluator"]
    return {f"{role}:{i}" for role in waiting for i in range(len(cfg.cluster.get(role, [])))}


def _lost_a_peer(outputs: ModelDir, what: str) -> int:
    _upload_last(outputs)
    # The servers keep waiting for us: a restarted chief resumes from the latest checkpoint.
    log.info(f"lost a peer ({what}); exiting for a restart from the latest checkpoint")
    return exits.PEER_LOST


def _upload_last(outputs: ModelDir) -> None:
    try:
        outputs.close(LAST_UPLOAD_SECONDS)
    except StorageError as err:
        log.warning("%s", err)


def _catch_sigterm() -> threading.Event:
    """Set on SIGTERM; the loop then saves and leaves (an Event: ModelDir's uploader reads it from its thread)."""
    preempted = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: preempted.set())
    return preempted


def _train(opts: TrainOptions, cfg: TFConfig, preempted: threading.Event, outputs: ModelDir) -> int:
    """Train to the end; return the final step (the step of the last checkpoint)."""
    run = _set_up(opts, cfg, outputs)
    blocks = Blocks(run)
    saves = Saves(run, blocks.sync)
    reporting = Reporting(run)
    train_start = time.monotonic()
    while run.epoch < opts.epochs:
        record = _epoch(run, blocks, saves, preempted)
        reporting.epoch(record)
        saves.save()
        if preempted.is_set():
            raise Preempted()
    if cfg.is_chief:
        if saves.count:
            log.info(f"{saves.count} checkpoints saved; training waited {saves.waited:.1f}s for them "
                f"({1000 * saves.waited / saves.count:.0f} ms each)")
        _finish(opts, outputs, run.model, reporting.evaluate_fn, run.splits, run.step, time.monotonic() - train_start,
                run.global_batch)
    return run.step


@dataclass
class Run:
    """What training needs, set up: the strategy, the data, the model with its optimizer and
    checkpoint, and where training stands (restored from the latest checkpoint)."""

    opts: TrainOptions
    cfg: TFConfig
    outputs: ModelDir
    strategy: tf.distribute.Strategy
    coordinator: Optional[tf.distribute.coordinator.ClusterCoordinator]
    splits: data.Splits
    global_batch: int
    steps_per_epoch: int
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    loss: keras.losses.Loss  # per example: the replicas average it over the global batch
    step_counter: tf.Variable
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    io: Optional[tf.train.CheckpointOptions]
    ckpt_dir: pathlib.Path
    step: int = 0
    epoch: int = 0

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


def _set_up(opts: TrainOptions, cfg: TFConfig, outputs: ModelDir) -> Run:
    """The strategy, the data and the model, restored from the latest checkpoint where there is one."""
    threads, why = cpus.intra_op_threads(opts.intra_op_threads, cfg)
    if why:
        log.info(why if cfg.is_chief else f"{cfg.task_type} {cfg.task_index}: {why}")
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(opts.inter_op_threads)
    keras.utils.set_random_seed(opts.seed)
    strategy, coordinator = _strategy(cfg)
    splits = data.load(opts)
    replicas = strategy.num_replicas_in_sync
    global_batch = max(opts.batch_size // replicas, 1) * replicas

    with strategy.scope():
        model = models.build(opts, splits.input_shape, splits.num_classes)
        optimizer = keras.optimizers.Adam(opts.learning_rate)
        optimizer.build(model.trainable_variables)
    # The chief counts finished steps itself: the optimizer's own counter lives on the parameter
    # servers, where concurrent workers' increments can be lost.
    step_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_counter)
    # Only the chief keeps checkpoints; other mirrored workers must still take part in saving.
    ckpt_dir = outputs.path / "checkpoints" if cfg.is_chief else pathlib.Path(tempfile.mkdtemp())
    # Mirrored workers start from the chief's checkpoint, as the chief does; neither resumes a run
    # that --restart discards (see trainer.fingerprint).
    latest = outputs.latest_checkpoint() if fingerprint.resumes(opts) else None
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=opts.keep_checkpoints)
    # Under ParameterServerStrategy each ps saves and restores its own variables, at the path it is
    # given; the chief's folder exists on the chief's disk only (a pod of its own), so the chief
    # does the file I/O for everyone.
    io = tf.train.CheckpointOptions(experimental_io_device=CHIEF_CPU) if coordinator else None
    if latest:
        _restore(checkpoint, latest, io, opts)
    run = Run(opts, cfg, outputs, strategy, coordinator, splits, global_batch,
              max(splits.train_size // global_batch, 1), model, optimizer,
              keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None), step_counter, checkpoint,
              manager, io, ckpt_dir, step=int(step_counter.numpy()))
    run.epoch = min(run.step // run.steps_per_epoch, opts.epochs)
    if run.step:
        log.info(f"resumed from checkpoint at step {run.step} (epoch {run.epoch + 1})")
    return run


class Blocks:
    """The step function, and blocks of `--steps-per-execution` steps of it: one `tf.function`
    call each, which ClusterCoordinator sends to a worker under ParameterServerStrategy and which
    runs in place under the other strategies.

    With --jit, XLA compiles as much of a block as the strategy allows. In one process, that is the
    whole block: its steps unrolled into one program, the optimizer's updates included. Under the
    other strategies, it is each replica's forward and backward pass (see `_compiled_gradients`).
    """

    def __init__(self, run: Run):
        opts, strategy, model, optimizer = run.opts, run.strategy, run.model, run.optimizer
        # The rate follows the chief's step count, not the optimizer's counter (see Run.step_counter).
        decay = (keras.optimizers.schedules.CosineDecay(opts.learning_rate, opts.epochs * run.steps_per_epoch)
                 if opts.lr_decay == "cosine" else None)
        gradients = _compiled_gradients(run) if opts.compiles() and not _in_one_process(run) else _gradients(run)

        def replica_step(x, y):
            grads, totals = gradients(x, y)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return totals

        def step(x, y):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, (x, y)), axis=None)

        if opts.compiles() and _in_one_process(run):
            chunk = min(opts.steps_per_execution, UNROLLED_STEPS)

            @tf.function(jit_compile=True)
            def compiled_steps(batches):
                totals = tf.zeros(3)
                for x, y in batches:
                    totals += step(x, y)
                return totals

            def steps_of_block(iterator, steps):
                """Chunks of steps, each one XLA program with its batches as arguments (XLA cannot
                compile the iterator), then what is left one step at a time: two programs to
                compile, whatever lengths blocks are cut to by checkpoints and epochs' ends."""
                totals = tf.zeros(3)
                for _ in tf.range(steps // chunk):
                    totals += compiled_steps([next(iterator) for _ in range(chunk)])
                for _ in tf.range(steps % chunk):
                    totals += compiled_steps([next(iterator)])
                return totals
        else:
            def steps_of_block(iterator, steps):
                totals = tf.zeros(3)
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

        stream = data.training_stream(run.splits, run.global_batch // run.replicas,
                                      None if run.coordinator else opts.seed, opts.augment)
        coordinator = run.coordinator
        if coordinator:
            self._iterator = iter(coordinator.create_per_worker_dataset(
                lambda: strategy.distribute_datasets_from_function(stream)))
            self._run = lambda *args: coordinator.schedule(train_block, args=args)
            self.sync = coordinator.join
        else:
            self._iterator = iter(strategy.distribute_datasets_from_function(stream))
            self._run = train_block
            self.sync = lambda: None

    def run(self, start: int, steps: int):
        """The block's summed loss, hits and examples: a value, or under ParameterServerStrategy a
        remote value to fetch once the epoch's blocks are done."""
        return self._run(self._iterator, tf.constant(start, tf.int64), tf.constant(steps))


def _in_one_process(run: Run) -> bool:
    return run.coordinator is None and run.cfg.strategy == "default"


def _scored(run: Run):
    """From a replica's logits: the loss to differentiate, and the batch's summed loss, hits and examples."""
    loss_fn, global_batch = run.loss, run.global_batch

    def scored(logits, y):
        per_example = loss_fn(y, logits)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        return loss, tf.stack([tf.reduce_sum(per_example), tf.reduce_sum(hits), tf.cast(tf.size(y), tf.float32)])

    return scored


def _gradients(run: Run):
    """One replica's forward and backward pass: the gradients and the batch's totals."""
    model, scored = run.model, _scored(run)

    def gradients(x, y):
        with tf.GradientTape() as tape:
            loss, totals = scored(model(x, training=True), y)
        return tape.gradient(loss, model.trainable_variables), totals

    return gradients


def _compiled_gradients(run: Run):
    """The forward and backward pass compiled by XLA, for the distributed strategies.

    XLA reads a variable only on the device that holds it: the compiled kernel looks each one up
    through `LookupResource`, which refuses a handle of another device ("Trying to access resource
    ... located in device ...", tensorflow/core/framework/resource_mgr.cc, `internal::ValidateDevice`).
    Under ParameterServerStrategy the variables live on the parameter servers, so the worker reads
    their values first and XLA computes on those; the optimizer's update stays outside, where the
    strategy places it (on the servers; after the all-reduce under MultiWorkerMirroredStrategy).
    """
    model, scored = run.model, _scored(run)

    @tf.function(jit_compile=True)
    def compiled(weights, x, y):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            logits, _ = model.stateless_call(weights, model.non_trainable_variables, x, training=True)
            loss, totals = scored(logits, y)
        return tape.gradient(loss, weights), totals

    return lambda x, y: compiled([tf.convert_to_tensor(w) for w in model.trainable_variables], x, y)


@dataclass
class Saves:
    """Checkpoints of the training state, and how long training waited for them."""

    run: Run
    sync: Callable[[], None]
    count: int = 0
    waited: float = 0.0

    def save(self) -> None:
        run = self.run
        self.sync()
        began = time.monotonic()
        if run.cfg.is_chief and not self.count:
            # What defines this run goes beside its first checkpoint (and before it, remotely: uploads
            # keep their order), so that no checkpoint is ever there without it.
            fingerprint.write(run.opts, run.outputs.path)
            run.outputs.publish(fingerprint.FILE)
        run.step_counter.assign(run.step)
        saved = run.manager.save(checkpoint_number=run.step, options=run.io)
        if run.cfg.is_chief:
            run.outputs.publish_checkpoint(pathlib.Path(saved).name)
        else:
            shutil.rmtree(run.ckpt_dir, ignore_errors=True)
        self.count += 1
        self.waited += time.monotonic() - began


def _epoch(run: Run, blocks: Blocks, saves: Saves, preempted: threading.Event) -> dict:
    """Train one epoch, saving every --checkpoint-every-steps; its row, without validation yet."""
    opts, steps_per_epoch = run.opts, run.steps_per_epoch
    started, epoch_end, block_totals = time.monotonic(), (run.epoch + 1) * steps_per_epoch, []
    first_step, last_said = run.step, started
    while run.step < epoch_end:
        next_save = (run.step // opts.checkpoint_every_steps + 1) * opts.checkpoint_every_steps
        n = min(opts.steps_per_execution, epoch_end - run.step, next_save - run.step)
        block_totals.append(blocks.run(run.step, n))
        run.step += n
        if run.step == next_save and run.step < epoch_end:
            saves.save()
        # SIGTERM in an epoch's last block: the epoch is finished, so it is counted and saved
        # by the caller before the chief leaves, or its row would be lost (the restart begins the next one).
        if preempted.is_set() and run.step < epoch_end:
            saves.save()
            raise Preempted()
        if run.cfg.is_chief and time.monotonic() - last_said > PROGRESS_EVERY:
            last_said = time.monotonic()
            rate = (run.step - first_step) / (last_said - started)
            log.info(f"epoch {run.epoch + 1}/{opts.epochs}: step {run.step - run.epoch * steps_per_epoch}/{steps_per_epoch}, "
                f"about {(opts.epochs * steps_per_epoch - run.step) / rate:.0f}s left")
    blocks.sync()
    loss_sum, hits, seen = _fetch_sum(block_totals)
    seconds = time.monotonic() - started
    run.epoch += 1
    return {"epoch": run.epoch, "step": run.step, "loss": loss_sum / seen, "accuracy": hits / seen,
            "seconds": seconds, "examples_per_sec": (run.step - first_step) * run.global_batch / seconds}


class Reporting:
    """The chief's account of training: its header, then each epoch's row with the validation
    figures, in metrics.jsonl, TensorBoard's events and the log, published after every epoch."""

    def __init__(self, run: Run):
        self.run = run
        self.evaluate_fn = make_evaluate_fn(run.model, run.loss)
        self.validation = data.evaluation_batches(run.splits.validation)
        if not run.cfg.is_chief:
            return
        opts, outputs = run.opts, run.outputs
        self.writer = tf.summary.create_file_writer(str(outputs.path / "logs" / "train"))
        outputs.fetch("metrics.jsonl")
        self.metrics = epoch_report.MetricsLog(outputs.path / "metrics.jsonl", resume_epoch=run.epoch)
        log.info(f"training {opts.model} on {opts.dataset}, {run.cfg.describe()}: {run.steps_per_epoch} steps per epoch "
            f"of {run.global_batch} examples")
        if run.global_batch != opts.batch_size:
            log.info(f"--batch-size {opts.batch_size} does not split evenly over {run.replicas} mirrored replicas; "
                f"each takes {run.global_batch // run.replicas}, so a step trains on {run.global_batch}")
        print(epoch_report.HEADER, flush=True)

    def epoch(self, record: dict) -> None:
        if not self.run.cfg.is_chief:
            return
        row = {key: record[key] for key in ("epoch", "step", "loss", "accuracy")}
        if self.validation is not None:
            row["val_loss"], row["val_accuracy"] = evaluate(self.evaluate_fn, self.validation)
        row.update(seconds=record["seconds"], examples_per_sec=record["examples_per_sec"])  # the time after
        record = row
        print(epoch_report.row(record, self.run.opts.epochs), flush=True)
        self.metrics.append(record)
        with self.writer.as_default(step=record["step"]):
            for key in epoch_report.COLUMNS[2:]:
                if key in record:
                    epoch_report.scalar(key, record[key], record["step"])
        self.writer.flush()
        self.run.outputs.publish("metrics.jsonl")
        self.run.outputs.publish("logs/train")


def _restore(checkpoint: tf.train.Checkpoint, latest: str, io, opts: TrainOptions) -> None:
    """Restore `latest`, requiring that every object of the checkpoint and of this run matched.

    run.json makes a mismatch rare; a model dir from before it, or a hand-edited one, may still hold
    a checkpoint of another network: that is refused in one line, not a traceback.
    """
    try:
        checkpoint.restore(latest, options=io).assert_consumed()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as err:
        problem = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise fingerprint.Mismatch(
            f"--model-dir {opts.model_dir}: checkpoint {pathlib.Path(latest).name} does not fit this model "
            f"({problem}): use another --model-dir, or --restart to discard that run and start afresh") from None


def _strategy(cfg: TFConfig):
    """The strategy for this cluster, and the coordinator when there are parameter servers."""
    if cfg.strategy == "default":
        return tf.distribute.get_strategy(), None
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cfg.training_cluster), task_type=cfg.task_type,
        task_id=cfg.task_index, rpc_layer="grpc")
    if cfg.strategy == "parameter_server":
        strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
        return strategy, tf.distribute.coordinator.ClusterCoordinator(strategy)
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver), None


def _fetch_sum(block_totals) -> tuple[float, float, float]:
    total = [0.0, 0.0, 0.0]
    for value in block_totals:
        value = value.fetch() if hasattr(value, "fetch") else value.numpy()
        total = [a + float(b) for a, b in zip(total, value)]
    return total[0], total[1], max(total[2], 1.0)


def _finish(opts, outputs, model, evaluate_fn, splits, step, seconds, global_batch) -> None:
    """Evaluate on the test split, export a SavedModel and write result.json (published last)."""
    test_loss, test_accuracy = evaluate(evaluate_fn, data.evaluation_batches(splits.test))
    export_dir = outputs.path / "saved_model"
    # Export a plain copy: the trained variables may live on parameter servers.
    serving = models.build(opts, splits.input_shape, splits.num_classes)
    serving.set_weights(model.get_weights())
    shutil.rmtree(export_dir, ignore_errors=True)
    export.save(serving, export_dir, splits.input_shape)
    outputs.publish("saved_model")
    result = {"test_loss": test_loss, "test_accuracy": test_accuracy, "steps": step,
              "epochs": opts.epochs, "train_seconds": seconds, "global_batch": global_batch,
              "saved_model": outputs.where("saved_model")}
    durable.write_json(outputs.path / "result.json", result)
    outputs.publish("result.json")
    print(f"test loss {test_loss:.4f}  test accuracy {test_accuracy:.4f}  "
          f"({step} steps in {seconds:.1f}s); SavedModel in {outputs.where('saved_model')}", flush=True)
