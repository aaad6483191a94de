"""The study's two networks, as Keras 3 models that output logits."""

from __future__ import annotations

import keras

from pml_trainer.options import TrainOptions


def build(opts: TrainOptions, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    if opts.model == "cnn":
        x = _flower_cnn(inputs)
    else:
        x = keras.layers.Flatten()(inputs)
        for _ in range(opts.hidden_layers):
            x = keras.layers.Dense(opts.neurons, activation="relu")(x)
    logits = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, logits, name=opts.model)


def _flower_cnn(x):
    """Three conv layers, a 64-unit dense layer and the classifier, as the study trained it: max-pooling
    after the first two convolutions only (keras_estimator in its distributed/trainer/model.py)."""
    for filters, pooled in ((32, True), (64, True), (64, False)):
        x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
        if pooled:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    return keras.layers.Dense(64, activation="relu")(x)
