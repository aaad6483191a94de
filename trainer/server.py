"""Worker and parameter-server tasks of a ParameterServerStrategy job: a TensorFlow server that
exits by itself, with code 0, once the chief says training is over, and with PREEMPTED (143,
retryable) when SIGTERM comes before that.
"""

from __future__ import annotations

import os
import signal
import threading

import tensorflow as tf

from pml_trainer import chief_state, exits, readings, thread_pools
from pml_trainer.log import log
from pml_trainer.options import TrainOptions
from pml_trainer.task import Task
from pml_trainer.tf_config import TFConfig, control_address

DRAIN_SECONDS = 25.0  # within the grace period (exits.GRACE_SECONDS)


def main(opts: TrainOptions, cfg: TFConfig) -> int:
    # Server.join() blocks forever and ignores signals, so the watch below runs in Python and
    # every way out goes through os._exit.
    host, port = control_address(cfg.chief_address)
    if cfg.task_type == "worker" and (opts.task is not None or opts.reads_image_files()):
        # The chief's pipeline will open the task's files here, on the worker's own disk, at the paths
        # the chief found: the data cache keeps a file at a path made of its URI alone (pml_trainer.shard).
        Task(opts).fetch_files()
    over = threading.Event()  # the chief said training is over
    signal.signal(
        signal.SIGTERM, lambda *_: threading.Thread(target=_drain, args=(host, port, over), daemon=True).start()
    )
    tf.distribute.Server(
        tf.train.ClusterSpec(cfg.training_cluster),
        job_name=cfg.task_type,
        task_index=cfg.task_index,
        protocol="grpc",
        config=thread_pools.server_config(),
        start=True,
    )
    log.info(f"{cfg.task_type} {cfg.task_index} serving at {cfg.address}")
    final = chief_state.wait_for_end(
        host,
        port,
        f"{cfg.task_type}:{cfg.task_index}",
        opts.orphan_timeout,
        before_acknowledging=chief_state.heard_the_end(over),
        first_contact_timeout=chief_state.first_contact_timeout(opts.chief_start_timeout, opts.orphan_timeout),
    )
    if final == chief_state.DONE:
        log.info(f"{cfg.task_type} {cfg.task_index}: the chief finished; exiting")
        return exits.OK
    log.info(f"{cfg.task_type} {cfg.task_index}: the chief failed or vanished; exiting")
    # Not retryable (exits.py: below 128), also for a chief never seen: restarting this server
    # cannot bring the chief. Under TFJob's ExitCode policy the operator then fails the job
    # (kubeflow/trainer v1.9.4 pkg/controller.v1/common/pod.go, ReconcilePods; pkg/util/train/
    # train_util.go, IsRetryableExitCode); a native worker's podFailurePolicy FailJob rule fails its
    # Job at once (charts/parallel-ml/templates/native.yaml; kubernetes pkg/controller/job/
    # pod_failure_policy.go), and so does a native ps's, whatever the job's restart policy.
    return exits.CHIEF_FAILED


def _drain(host: str, port: int, over: threading.Event) -> None:
    """On SIGTERM, keep serving while the chief still runs, then exit: 0 once training is over,
    PREEMPTED (retryable) before (chief_state.drain).

    Kubernetes sends SIGTERM to every pod of a preempted job at once. The chief answers it by
    saving a checkpoint, which reads every variable from the parameter servers, so they must not
    leave before it has finished (or before the grace period runs out).
    """
    code = chief_state.drain(host, port, over, DRAIN_SECONDS)
    readings.finish(exits.GRACE_SECONDS - DRAIN_SECONDS - 1)  # a Job's last pods are stopped this way
    os._exit(code)
