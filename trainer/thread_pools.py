"""TensorFlow's thread pools for this task, sized once for every role (chief, servers, evaluator).

The share of the CPUs comes from trainer/cpus.py, which stays free of TensorFlow for pmlctl.
"""

from __future__ import annotations

import tensorflow as tf

from pml_trainer import cpus
from pml_trainer.options import TrainOptions
from pml_trainer.tf_config import TFConfig

# A worker server with one inter-op thread deadlocks on its first step.
MIN_SERVER_INTER_OP_THREADS = 2


def apply(opts: TrainOptions, cfg: TFConfig, serves_only: bool) -> str | None:
    """Size TensorFlow's thread pools for this task before anything starts TensorFlow's runtime
    (the user's task module may, as it imports); return why the share is what it is (see
    `intra_op_threads`), for the caller to log."""
    intra, why = cpus.intra_op_threads(opts.intra_op_threads, cfg)
    inter = max(opts.inter_op_threads, MIN_SERVER_INTER_OP_THREADS if serves_only else 0)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    return why


def server_config() -> tf.compat.v1.ConfigProto:
    """The sizes `apply` set, as the ConfigProto a `tf.distribute.Server` takes."""
    return tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads(),
    )
