"""The trainer's networks are the study's (its code: github.com/dylanfu/parallel-ml)."""

from __future__ import annotations

import keras

from deploy.presets import PRESETS
from pml_trainer import models
from pml_trainer.options import TrainOptions, parse_args


def test_the_cnn_is_the_studys_flower_network():
    """keras_estimator in the study's distributed/trainer/model.py: 3x3 convolutions of 32, 64 and 64
    filters on 64x64x3 images, max-pooling after the first two only, Dense(64), 5 classes."""
    model = models.build(parse_args(["--model", "cnn"]), (64, 64, 3), 5)
    shapes = [tuple(layer.output.shape[1:]) for layer in model.layers[1:]]
    assert shapes == [(62, 62, 32), (31, 31, 32), (29, 29, 64), (14, 14, 64), (12, 12, 64), (9216,), (64,), (5,)]
    convolutions = (3 * 3 * 3 + 1) * 32 + (3 * 3 * 32 + 1) * 64 + (3 * 3 * 64 + 1) * 64
    assert model.count_params() == convolutions + (9216 + 1) * 64 + (64 + 1) * 5 == 646533
    assert isinstance(model.layers[-1], keras.layers.Dense) and model.layers[-1].activation is keras.activations.linear


def test_the_fashion_mlp_is_the_studys_sequential_network():
    """The study's fashion_mnist model: Flatten, Dense(128, relu), Dense(10)."""
    model = models.build(TrainOptions(**PRESETS["fashion-mlp"]["trainer"]), (28, 28, 1), 10)
    assert [tuple(layer.output.shape[1:]) for layer in model.layers[1:]] == [(784,), (128,), (10,)]
    assert model.count_params() == (784 + 1) * 128 + (128 + 1) * 10
