"""TensorFlow's thread pools for this task, sized once for every role (chief, servers, evaluator).

The share of the CPUs comes from trainer/cpus.py, which stays free of TensorFlow for pmlctl.
"""

from __future__ import annotations

import tensorflow as tf

from pml_trainer import cpus
from pml_trainer.options import TrainOptions
from pml_trainer.tf_config import TFConfig


def size(opts: TrainOptions, cfg: TFConfig, min_inter_op: int = 0):
    """Size TensorFlow's thread pools for this task (`opts`: its TrainOptions), before TensorFlow
    starts its runtime; return the same sizes as the ConfigProto a `tf.distribute.Server` takes, and
    why the share is what it is (see `intra_op_threads`), for the caller to log."""
    intra, why = cpus.intra_op_threads(opts.intra_op_threads, cfg)
    inter = max(opts.inter_op_threads, min_inter_op)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra, inter_op_parallelism_threads=inter), why
