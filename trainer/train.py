"""The chief's role (and a mirrored worker's): set up the task and the strategy, train with the
controller, then evaluate on the test split, export a SavedModel and write result.json. Around
that: the other tasks are waited for at the start and told the outcome at the end, and every way
out has its exit code (pml_trainer.exits).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import keras

from pml_trainer import (
    checkpoints,
    chief_state,
    chiefs,
    durable,
    epoch_report,
    exits,
    failures,
    fingerprint,
    liveness,
    loop,
)
from pml_trainer.controller import Controller
from pml_trainer.log import log
from pml_trainer.model_dir import ModelDir
from pml_trainer.options import TrainOptions
from pml_trainer.storage import StorageError
from pml_trainer.task import Task
from pml_trainer.tf_config import TFConfig, control_address

# Before exiting for a restart, the last checkpoint may still be on its way to a remote model
# dir; waiting a little spares the restarted chief some repeated steps. SIGTERM leaves 30 s.
LAST_UPLOAD_SECONDS = 20.0


def main(opts: TrainOptions, cfg: TFConfig) -> int:
    peers = _peers_to_tell(cfg)
    host, port = control_address(cfg.chief_address)
    state = chief_state.StateServer(port, peers, host=host) if peers is not None else None
    preempted = _catch_sigterm()
    model_dir = ModelDir(
        opts.model_dir,
        opts.s3_endpoint,
        f"{cfg.task_type}-{cfg.task_index}",
        opts.keep_checkpoints,
        writer=cfg.is_chief,
        adopt_staged=cfg.strategy != "multi_worker_mirrored",
        interrupted=preempted.is_set,
        single_writer=opts.single_writer,
    )
    try:
        if not liveness.wait_for_tasks(cfg, interrupted=preempted.is_set):
            log.info("SIGTERM while waiting for the other tasks; exiting")
            _leave(model_dir, exits.PREEMPTED)
            return exits.PREEMPTED
        if cfg.strategy == "parameter_server":
            liveness.keep_alive()  # before the strategy opens its channels
            liveness.say_lost_workers()
        training_over = liveness.watch_parameter_servers(cfg, lambda reason: os._exit(_lost_a_peer(model_dir, reason)))
        final_step = train(opts, cfg, model_dir, preempted)
        training_over.set()  # the servers leave by themselves once told, and must not be missed
    except Exception as err:
        code = failures.exit_code(err)
        if code == exits.FENCED:  # the uploader said why; the peers belong to the chief that took over
            model_dir.ended(code)
            return code
        if code is not None and exits.is_retryable(code):
            if code == exits.PEER_LOST:
                return _lost_a_peer(model_dir, _what_was_lost(err))
            _leave(model_dir, code)
            # An outage longer than reads wait, or SIGTERM: the servers wait for a restart.
            log.info(
                "SIGTERM: checkpoint saved; exiting for a restart"
                if code == exits.PREEMPTED
                else f"{err}; exiting for a restart"
            )
            return code
        if state is not None:  # a failure for good: tell the servers, so they stop waiting
            state.finish(chief_state.FAILED, linger=5.0)
        _leave(model_dir, code if code is not None else exits.FAILED)
        raise
    try:
        model_dir.close()
    except StorageError as err:
        if failures.exit_code(err) == exits.FENCED:
            model_dir.ended(exits.FENCED)
            return exits.FENCED
        if isinstance(err, checkpoints.Taken):  # the uploader said why
            if state is not None:
                state.finish(chief_state.FAILED, linger=5.0)
            model_dir.ended(exits.BAD_INPUT)
            return exits.BAD_INPUT
        # The servers are not told: they wait for the restarted chief, which finishes again.
        log.info(f"{err}; exiting for a restart")
        model_dir.ended(exits.PEER_LOST)
        return exits.PEER_LOST
    _leave(model_dir, exits.OK)
    if state is not None:
        _tell_the_end(state, final_step, preempted)
    model_dir.done()
    return exits.OK


def train(opts: TrainOptions, cfg: TFConfig, model_dir: ModelDir, preempted: threading.Event) -> int:
    """Train to the end; return the final step (the step of the last checkpoint)."""
    keras.utils.set_random_seed(opts.seed)
    strategy, coordinator = loop.distribution(cfg)
    task = Task(opts)  # after the strategy: its tensors must live in the context the strategy set up
    controller = Controller(task, cfg, model_dir, strategy, coordinator, preempted)
    began = time.monotonic()
    controller.train()
    if cfg.is_chief:
        _publish_results(controller, time.monotonic() - began)
    return controller.step


def _publish_results(controller: Controller, seconds: float) -> None:
    """Evaluate on eval_data, export a SavedModel and write result.json (published last)."""
    task, model_dir, step = controller.task, controller.model_dir, controller.step
    batches = task.test_data()
    test = {f"test_{name}": value for name, value in controller.evaluate(batches).items()} if batches else {}
    export_dir = model_dir.path / "saved_model"
    # Export a plain copy: the trained variables may live on parameter servers.
    serving = task.built_model()
    serving.set_weights(controller.model.get_weights())
    shutil.rmtree(export_dir, ignore_errors=True)
    task.export(serving, export_dir)
    model_dir.publish("saved_model")
    result = {
        **test,
        "steps": step,
        "epochs": task.opts.epochs,
        "train_seconds": seconds,
        "global_batch": controller.global_batch,
        "saved_model": model_dir.where("saved_model"),
        **fingerprint.code(task.opts),
    }
    if os.environ.get(chiefs.SUBMISSION_ENV):  # which submission wrote it (deploy/k8s/target.py, _collected)
        result["submission"] = os.environ[chiefs.SUBMISSION_ENV]
    durable.write_json(model_dir.path / "result.json", result)
    model_dir.publish("result.json")
    scores = epoch_report.scores(test) if test else "no eval_data to test on"
    print(f"{scores} ({step} steps in {seconds:.1f}s); SavedModel in {model_dir.where('saved_model')}", flush=True)


def _tell_the_end(state: chief_state.StateServer, final_step: int, preempted: threading.Event) -> None:
    """Everything is published, the last checkpoint included. The evaluator confirms the end only
    once that checkpoint's evaluation is in eval.jsonl, so the chief waits for it longer than for
    servers: once the chief exits, TFJob may delete the evaluator (cleanPodPolicy Running).
    SIGTERM stops the wait: the job is being deleted anyway, and training is over."""
    missing = state.finish(
        chief_state.DONE,
        linger=30.0,
        step=final_step,
        evaluator_linger=chief_state.FINAL_EVALUATION_SECONDS,
        interrupted=preempted.is_set,
    )
    evaluator = {peer for peer in missing if peer.startswith("evaluator:")}
    if evaluator:
        why = "SIGTERM came first" if preempted.is_set() else f"not within {chief_state.FINAL_EVALUATION_SECONDS:.0f}s"
        log.warning(
            f"the evaluator did not confirm its evaluation of the final checkpoint, step "
            f"{final_step} ({why}); eval.jsonl may lack it"
        )
    if missing - evaluator:
        log.warning(f"{', '.join(sorted(missing - evaluator))} did not confirm the end; leaving anyway")


def _peers_to_tell(cfg: TFConfig) -> set[str] | None:
    """Tasks that wait for the chief's word that training is over (None: nobody listens)."""
    if not cfg.is_chief or sum(map(len, cfg.cluster.values())) < 2:
        return None
    waiting = ["evaluator"] if cfg.strategy != "parameter_server" else ["worker", "ps", "evaluator"]
    return {f"{role}:{i}" for role in waiting for i in range(len(cfg.cluster.get(role, [])))}


def _what_was_lost(err: Exception) -> str:
    """What a lost peer's error says: liveness's own message, or TensorFlow's first line."""
    if isinstance(err, liveness.PeerLost):
        return str(err)
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def _lost_a_peer(model_dir: ModelDir, what: str) -> int:
    _leave(model_dir, exits.PEER_LOST)
    # The servers keep waiting for us: a restarted chief resumes from the latest checkpoint.
    log.info(f"lost a peer ({what}); exiting for a restart from the latest checkpoint")
    return exits.PEER_LOST


def _leave(model_dir: ModelDir, code: int) -> None:
    """Say how this chief ends in its record (pml_trainer.chiefs), and give the last uploads, that
    record included, a little time."""
    model_dir.ended(code)
    try:
        model_dir.close(LAST_UPLOAD_SECONDS)
    except StorageError as err:
        log.warning("%s", err)


def _catch_sigterm() -> threading.Event:
    """Set on SIGTERM; the loop then saves and leaves (an Event: ModelDir's uploader reads it from its thread)."""
    preempted = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: preempted.set())
    return preempted
