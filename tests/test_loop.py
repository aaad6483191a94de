"""The training loop in this process, under each strategy: the controller with the default strategy
(epochs, checkpoints, SIGTERM and resumption), the same replica step over two mirrored CPUs, and
the controller's blocks on an in-process parameter-server cluster. No subprocess: seconds each.
"""

from __future__ import annotations

import json
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.distribute import multi_worker_test_base
from tensorflow.python.distribute import test_util as tf_distribute_test_util
from tensorflow.python.eager import context

from pml_trainer import loop
from pml_trainer.controller import Controller, Preempted
from pml_trainer.model_dir import ModelDir
from pml_trainer.options import validated
from pml_trainer.task import Task
from pml_trainer.tf_config import ALONE, TFConfig

# 1800 examples of 8x8 pixels for training (a tenth of 2000 held out) in steps of 100: 18 steps per epoch.
STEPS_PER_EPOCH = 18


def options(tmp_path, **changes):
    return validated(
        {
            "dataset": "synthetic:8x8x1",
            "train_examples": 2000,
            "batch_size": 100,
            "neurons": 32,
            "epochs": 2,
            "model_dir": str(tmp_path / "model"),
            "checkpoint_every_steps": 5,
            "steps_per_execution": 4,
            **changes,
        }
    )


def controller(opts, cfg=ALONE, preempted=None, distribution=None) -> Controller:
    keras.utils.set_random_seed(opts.seed)
    strategy, coordinator = distribution or loop.distribution(cfg)
    model_dir = ModelDir(
        opts.model_dir, None, f"{cfg.task_type}-{cfg.task_index}", opts.keep_checkpoints, writer=cfg.is_chief
    )
    return Controller(Task(opts), cfg, model_dir, strategy, coordinator, preempted or threading.Event())


def rows(opts) -> list[dict]:
    with open(f"{opts.model_dir}/metrics.jsonl") as lines:
        return [json.loads(line) for line in lines]


def test_default_strategy_learns_and_resumes_after_sigterm(tmp_path):
    opts = options(tmp_path)
    sigterm = threading.Event()
    sigterm.set()  # SIGTERM during the first block: it is saved, and training stops
    first = controller(opts, preempted=sigterm)
    assert first.steps_per_epoch == STEPS_PER_EPOCH
    with pytest.raises(Preempted):
        first.train()
    assert first.step == opts.steps_per_execution
    assert first.checkpoints.manager.latest_checkpoint.endswith("ckpt-4")

    second = controller(opts)
    assert (second.step, second.epoch) == (4, 0)  # resumed from the checkpoint saved on SIGTERM
    second.train()
    assert second.step == opts.epochs * STEPS_PER_EPOCH
    epochs = rows(opts)
    assert [(row["epoch"], row["step"]) for row in epochs] == [(1, 18), (2, 36)]
    assert epochs[1]["loss"] < epochs[0]["loss"] and epochs[1]["val_loss"] < epochs[0]["val_loss"]
    assert 0 < epochs[0]["accuracy"] < epochs[1]["accuracy"] <= 1
    # Blocks are cut at each checkpoint (every 5 steps) and at the epoch's end; the manager keeps the last 3.
    assert second.checkpoints.manager.latest_checkpoint.endswith("ckpt-36")
    assert [int(path.rpartition("-")[2]) for path in second.checkpoints.manager.checkpoints] == [30, 35, 36]


@pytest.fixture
def two_cpus():
    """Two logical CPUs, for a MirroredStrategy in one process.

    Logical devices can only be set before TensorFlow initialises its context, and this pytest
    process may already have (another test's tensors), so the context is reset first, as
    TensorFlow's own tests do (tensorflow/python/distribute/strategy_combinations.py,
    `_mirrored_strategy_with_collective_key_base`). Nothing of another test is used across the reset.
    """
    if len(tf.config.list_logical_devices("CPU")) < 2:
        context._reset_context()
        tf_distribute_test_util.set_logical_devices_to_at_least("CPU", 2)
    return ["/cpu:0", "/cpu:1"]


def test_mirrored_replicas_step_as_one_process_does(tmp_path, two_cpus):
    """Two replicas of 50 examples each take the same steps as one replica of 100: the same first
    100 examples of the shuffled stream, the batch's totals summed over the replicas, and the
    gradients too (each replica's loss is its share of the global batch's mean). Without XLA,
    which would compile the step once per strategy for no other finding."""
    opts = options(tmp_path, jit=False)
    task = Task(opts)

    def three_steps(strategy):
        keras.utils.set_random_seed(opts.seed)
        with strategy.scope():
            model = task.build_model()
            optimizer = task.build_optimizer(model)
        runner = loop.StepRunner(
            task, model, optimizer, strategy, None, global_batch=opts.batch_size, total_steps=100, one_process=False
        )
        totals = [runner.run(step, 1).numpy() for step in range(3)]
        return totals, [np.asarray(w) for w in model.get_weights()]

    mirrored = tf.distribute.MirroredStrategy(two_cpus)
    assert mirrored.num_replicas_in_sync == 2
    one_totals, one_weights = three_steps(tf.distribute.get_strategy())
    two_totals, two_weights = three_steps(mirrored)
    assert [t[-1] for t in two_totals] == [100.0] * 3  # examples: every replica's counted
    np.testing.assert_allclose(two_totals, one_totals, rtol=1e-4)
    for one, two in zip(one_weights, two_weights, strict=False):
        np.testing.assert_allclose(two, one, rtol=1e-3, atol=1e-5)
    assert not np.allclose(one_weights[0], task.build_model().get_weights()[0])  # it did train


@pytest.fixture
def parameter_server_cluster():
    """Two workers and a ps as in-process TensorFlow servers (TensorFlow's own test clusters:
    tensorflow/python/distribute/multi_worker_test_base.py), with this process as the chief.

    Connecting to a cluster changes this process's TensorFlow context, so it is reset afterwards
    for the tests that follow; the servers cannot be stopped and live on, idle.
    """
    cluster = multi_worker_test_base.create_in_process_cluster(num_workers=2, num_ps=1)
    cluster["chief"] = [f"localhost:{multi_worker_test_base.pick_unused_port()}"]
    yield TFConfig(cluster, "chief", 0)
    context._reset_context()


def test_parameter_server_blocks_run_on_the_workers(tmp_path, parameter_server_cluster):
    cfg = parameter_server_cluster
    assert cfg.strategy == "parameter_server"
    opts = options(tmp_path)
    trained = controller(opts, cfg)
    assert trained.runner.join is not None and trained.global_batch == 100
    trained.train()
    assert trained.step == opts.epochs * STEPS_PER_EPOCH
    epochs = rows(opts)
    assert [(row["epoch"], row["step"]) for row in epochs] == [(1, 18), (2, 36)]
    assert epochs[1]["loss"] < epochs[0]["loss"]
    # Saved through the chief's CPU (the ps's variables included): the step counter restores.
    assert trained.checkpoints.manager.latest_checkpoint.endswith("ckpt-36")
    assert (
        tf.train.load_checkpoint(trained.checkpoints.manager.latest_checkpoint).get_tensor(
            "step/.ATTRIBUTES/VARIABLE_VALUE"
        )
        == 36
    )
    # A block's examples, counted on the workers and fetched by the chief.
    block = trained.runner.run(trained.step, 5)
    trained.runner.join()
    assert loop.fetch_totals([block], len(trained.task.names) + 1)[-1] == 5 * trained.global_batch
