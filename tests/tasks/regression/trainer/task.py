"""A regression on TFRecord shards, laid out as Vertex AI documents it (trainer/task.py): a test
task that is not the study's. Its data comes from `make_data.py`."""

import keras
import tensorflow as tf

import pml_trainer
from trainer import model as networks
from trainer.records import FEATURES, parse

EXAMPLES_PER_EPOCH = 4096


def model(params):
    return networks.build(FEATURES, params.get("units", 32))


def train_data(params, shard):
    return tf.data.TFRecordDataset(shard.files(params["train"])).map(parse)


def eval_data(params):
    return tf.data.TFRecordDataset(pml_trainer.files(params["eval"])).map(parse)


def loss(params):
    return keras.losses.MeanSquaredError()


def metrics(params):
    return [keras.metrics.MeanAbsoluteError(name="mae")]


def optimizer(params):
    return keras.optimizers.Adam(params.get("learning_rate", 0.01))
