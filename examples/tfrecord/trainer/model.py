"""The network, in a module of the task's own `trainer` package."""

import keras


def build(features: int, units: int) -> keras.Model:
    inputs = keras.Input(shape=(features,), name="features")
    hidden = keras.layers.Dense(units, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, name="value")(hidden))
