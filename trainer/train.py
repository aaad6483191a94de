"""The training loop: one step definition for the default, multi-worker and parameter-server
strategies, with checkpoints every N steps and resumption from the latest one.
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import socket
import tempfile
import time

import keras
import tensorflow as tf

from trainer import control, data, exits, export, fingerprint, models, report
from trainer.checkpoints import Fenced
from trainer.evaluator import evaluate, make_evaluate_fn
from trainer.model_dir import ModelDir
from trainer.options import TrainOptions
from trainer.report import say
from trainer.storage import StorageError, StorageUnavailable
from trainer.tf_config import TFConfig, control_address

PROGRESS_EVERY = 15.0  # seconds between progress lines within an epoch
STARTUP_TIMEOUT = 600.0  # 10 servers on 2 cores take a while to import TensorFlow
CHIEF_CPU = "/job:chief/replica:0/task:0/device:CPU:0"  # the coordinator, in a ParameterServerStrategy cluster
# Before exiting for a restart, the last checkpoint may still be on its way to a remote model
# dir; waiting a little spares the restarted chief some repeated steps. SIGTERM leaves 30 s.
LAST_UPLOAD_SECONDS = 20.0


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
                       interrupted=lambda: preempted[0])
    try:
        final_step = _train(opts, cfg, preempted, outputs)
    except Preempted:
        _upload_last(outputs)
        say("SIGTERM: checkpoint saved; exiting for a restart")
        return exits.PREEMPTED
    except RETRYABLE_ERRORS as err:
        _upload_last(outputs)
        # The servers keep waiting for us: a restarted chief resumes from the latest checkpoint.
        say(f"lost a peer ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "exiting for a restart from the latest checkpoint")
        return exits.PEER_LOST
    except Fenced:  # the uploader said why; the peers belong to the chief that took over
        return exits.FENCED
    except StorageUnavailable as err:  # an outage longer than reads wait: the servers wait for a restart
        _upload_last(outputs)
        say(f"{err}; exiting for a restart")
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
        say(f"{err}; exiting for a restart")
        return exits.PEER_LOST
    if state is not None:
        # Everything is published, the last checkpoint included. The evaluator confirms the end only
        # once that checkpoint's evaluation is in eval.jsonl, so the chief waits for it longer than
        # for servers: once the chief exits, TFJob may delete the evaluator (cleanPodPolicy Running).
        # SIGTERM stops the wait: the job is being deleted anyway, and training is over.
        missing = state.finish(control.DONE, linger=30.0, step=final_step,
                               evaluator_linger=control.FINAL_EVALUATION_SECONDS,
                               interrupted=lambda: preempted[0])
        evaluator = {peer for peer in missing if peer.startswith("evaluator:")}
        if evaluator:
            why = "SIGTERM came first" if preempted[0] else f"not within {control.FINAL_EVALUATION_SECONDS:.0f}s"
            say(f"warning: the evaluator did not confirm its evaluation of the final checkpoint, step "
                f"{final_step} ({why}); eval.jsonl may lack it")
        if missing - evaluator:
            say(f"warning: {', '.join(sorted(missing - evaluator))} did not confirm the end; leaving anyway")
    return exits.OK


def _peers_to_tell(cfg: TFConfig) -> set[str] | None:
    """Tasks that wait for the chief's word that training is over (None: nobody listens)."""
    if not cfg.is_chief or len(sum(cfg.cluster.values(), [])) < 2:
        return None
    waiting = ["evaluator"] if cfg.strategy != "parameter_server" else ["worker", "ps", "evaluator"]
    return {f"{role}:{i}" for role in waiting for i in range(len(cfg.cluster.get(role, [])))}


def _upload_last(outputs: ModelDir) -> None:
    try:
        outputs.close(LAST_UPLOAD_SECONDS)
    except StorageError as err:
        say(f"warning: {err}")


def _catch_sigterm() -> list[bool]:
    flag = [False]
    signal.signal(signal.SIGTERM, lambda *_: flag.__setitem__(0, True))
    return flag


def _train(opts: TrainOptions, cfg: TFConfig, preempted: list[bool], outputs: ModelDir) -> int:
    """Train to the end; return the final step (the step of the last checkpoint)."""
    model_dir = outputs.path
    tf.config.threading.set_intra_op_parallelism_threads(opts.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(opts.inter_op_threads)
    keras.utils.set_random_seed(opts.seed)
    strategy, coordinator = _strategy(cfg)
    splits = data.load(opts)
    replicas = strategy.num_replicas_in_sync
    global_batch = max(opts.batch_size // replicas, 1) * replicas
    steps_per_epoch = max(splits.train_size // global_batch, 1)

    with strategy.scope():
        model = models.build(opts, splits.input_shape, splits.num_classes)
        optimizer = keras.optimizers.Adam(opts.learning_rate)
        optimizer.build(model.trainable_variables)
    # The chief counts finished steps itself: the optimizer's own counter lives on the parameter
    # servers, where concurrent workers' increments can be lost.
    step_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    # The rate follows the chief's step count, not the optimizer's counter, for the same reason.
    decay = (keras.optimizers.schedules.CosineDecay(opts.learning_rate, opts.epochs * steps_per_epoch)
             if opts.lr_decay == "cosine" else None)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_counter)
    # Only the chief keeps checkpoints; other mirrored workers must still take part in saving.
    ckpt_dir = model_dir / "checkpoints" if cfg.is_chief else pathlib.Path(tempfile.mkdtemp())
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
    step = int(step_counter.numpy())
    epoch = min(step // steps_per_epoch, opts.epochs)
    if step:
        say(f"resumed from checkpoint at step {step} (epoch {epoch + 1})")

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = loss_fn(y, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        return tf.stack([tf.reduce_sum(per_example), tf.reduce_sum(hits), tf.cast(tf.size(y), tf.float32)])

    @tf.function
    def train_block(iterator, start, steps):
        """`steps` training steps in one call: one RPC per block under ParameterServerStrategy.

        `steps` is a tensor: as a Python number, each new value (a block cut short by a
        checkpoint or an epoch's end) would trace the function again, for a good fraction of a second.
        """
        if decay is not None:
            optimizer.learning_rate.assign(decay(start))
        totals = tf.zeros(3)
        for _ in tf.range(steps):
            x, y = next(iterator)
            totals += strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, (x, y)), axis=None)
        return totals

    stream = data.training_stream(splits, global_batch // replicas,
                                  None if coordinator else opts.seed, opts.augment)
    if coordinator:
        iterator = iter(coordinator.create_per_worker_dataset(
            lambda: strategy.distribute_datasets_from_function(stream)))
        run_block = lambda *args: coordinator.schedule(train_block, args=args)  # noqa: E731
        sync = coordinator.join
    else:
        iterator = iter(strategy.distribute_datasets_from_function(stream))
        run_block = train_block
        sync = lambda: None  # noqa: E731

    evaluate_fn = make_evaluate_fn(model, loss_fn)
    validation = data.evaluation_batches(splits.validation)
    writer = tf.summary.create_file_writer(str(model_dir / "logs" / "train")) if cfg.is_chief else None
    metrics = None
    if cfg.is_chief:
        outputs.fetch("metrics.jsonl")
        metrics = report.MetricsLog(model_dir / "metrics.jsonl", resume_epoch=epoch)
        say(f"training {opts.model} on {opts.dataset}, {cfg.describe()}: {steps_per_epoch} steps per epoch "
            f"of {global_batch} examples")
        if global_batch != opts.batch_size:
            say(f"note: --batch-size {opts.batch_size} does not split evenly over {replicas} mirrored replicas; "
                f"each takes {global_batch // replicas}, so a step trains on {global_batch}")
        print(report.HEADER, flush=True)

    saves = [0, 0.0]  # how many, and the seconds training waited for them

    def save():
        sync()
        began = time.monotonic()
        if cfg.is_chief and not saves[0]:
            # What defines this run goes beside its first checkpoint (and before it, remotely: uploads
            # keep their order), so that no checkpoint is ever there without it.
            fingerprint.write(opts, outputs.path)
            outputs.publish(fingerprint.FILE)
        step_counter.assign(step)
        saved = manager.save(checkpoint_number=step, options=io)
        if cfg.is_chief:
            outputs.publish_checkpoint(pathlib.Path(saved).name)
        else:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        saves[0] += 1
        saves[1] += time.monotonic() - began

    train_start = time.monotonic()
    while epoch < opts.epochs:
        started, epoch_end, block_totals = time.monotonic(), (epoch + 1) * steps_per_epoch, []
        first_step, last_said = step, started
        while step < epoch_end:
            next_save = (step // opts.checkpoint_every_steps + 1) * opts.checkpoint_every_steps
            n = min(opts.steps_per_execution, epoch_end - step, next_save - step)
            block_totals.append(run_block(iterator, tf.constant(step, tf.int64), tf.constant(n)))
            step += n
            if step == next_save and step < epoch_end:
                save()
            # SIGTERM in an epoch's last block: the epoch is finished, so it is counted and saved
            # below before the chief leaves, or its row would be lost (the restart begins the next one).
            if preempted[0] and step < epoch_end:
                save()
                raise Preempted()
            if cfg.is_chief and time.monotonic() - last_said > PROGRESS_EVERY:
                last_said = time.monotonic()
                rate = (step - first_step) / (last_said - started)
                say(f"epoch {epoch + 1}/{opts.epochs}: step {step - epoch * steps_per_epoch}/{steps_per_epoch}, "
                    f"about {(opts.epochs * steps_per_epoch - step) / rate:.0f}s left")
        sync()
        loss_sum, hits, seen = _fetch_sum(block_totals)
        seconds = time.monotonic() - started
        epoch += 1
        record = {"epoch": epoch, "step": step, "loss": loss_sum / seen, "accuracy": hits / seen}
        if validation is not None and cfg.is_chief:
            record["val_loss"], record["val_accuracy"] = evaluate(evaluate_fn, validation)
        record.update(seconds=seconds, examples_per_sec=(step - first_step) * global_batch / seconds)
        if cfg.is_chief:
            print(report.row(record, opts.epochs), flush=True)
            metrics.append(record)
            with writer.as_default(step=step):
                for key in report.COLUMNS[2:]:
                    if key in record:
                        report.scalar(key, record[key], step)
            writer.flush()
            outputs.publish("metrics.jsonl")
            outputs.publish("logs/train")
        save()
        if preempted[0]:
            raise Preempted()

    if cfg.is_chief:
        if saves[0]:
            say(f"{saves[0]} checkpoints saved; training waited {saves[1]:.1f}s for them "
                f"({1000 * saves[1] / saves[0]:.0f} ms each)")
        _finish(opts, outputs, model, evaluate_fn, splits, step, time.monotonic() - train_start, global_batch)
    return step


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
    _wait_for_tasks(cfg)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cfg.training_cluster), task_type=cfg.task_type,
        task_id=cfg.task_index, rpc_layer="grpc")
    if cfg.strategy == "parameter_server":
        strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
        return strategy, tf.distribute.coordinator.ClusterCoordinator(strategy)
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver), None


def _wait_for_tasks(cfg: TFConfig) -> None:
    """Wait until every other training task accepts connections, saying who is still missing."""
    if cfg.strategy == "multi_worker_mirrored":
        return  # mirrored workers start their servers inside the strategy and wait for each other
    others = [a for role, tasks in cfg.training_cluster.items() for i, a in enumerate(tasks)
              if (role, i) != (cfg.task_type, cfg.task_index)]
    deadline, last_said = time.monotonic() + STARTUP_TIMEOUT, 0.0
    while True:
        missing = [a for a in others if not _accepts(a)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise tf.errors.UnavailableError(None, None, f"tasks never came up: {', '.join(missing)}")
        if time.monotonic() - last_said > 15:
            say(f"waiting for {len(missing)} of {len(others)} tasks: {', '.join(missing[:4])}")
            last_said = time.monotonic()
        time.sleep(0.5)


def _accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
        return True
    except OSError:
        return False


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
    report.write_json(outputs.path / "result.json", result)
    outputs.publish("result.json")
    print(f"test loss {test_loss:.4f}  test accuracy {test_accuracy:.4f}  "
          f"({step} steps in {seconds:.1f}s); SavedModel in {outputs.where('saved_model')}", flush=True)
