"""The SavedModel a job leaves behind, made to be served as it is.

Its `serving_default` signature takes images as the dataset stores them, uint8 pixels (a
single-channel image without its channel axis, as fashion_mnist's 28x28), and returns each class's
probability and the most likely class. Scaling to [0, 1] happens inside, so a server never has to
know that the model trained on pixels divided by 255: raw pixels given to a bare Keras export lost
two points of accuracy without any error.
"""

from __future__ import annotations

import pathlib

import keras
import tensorflow as tf

SIGNATURE = "serving_default"
INPUT = "images"
OUTPUTS = ("probabilities", "class")


class _Serving(tf.Module):
    def __init__(self, model: keras.Model, input_shape: tuple[int, int, int]):
        super().__init__()
        self.model = model
        height, width, channels = input_shape
        self.channels = channels
        stored = [None, height, width] if channels == 1 else [None, height, width, channels]
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec(stored, tf.uint8, name=INPUT)])

    def _serve(self, images):
        pixels = tf.cast(images, tf.float32) / 255.0
        if self.channels == 1:
            pixels = pixels[..., tf.newaxis]
        logits = self.model(pixels, training=False)
        return {OUTPUTS[0]: tf.nn.softmax(logits), OUTPUTS[1]: tf.argmax(logits, -1, output_type=tf.int32)}


def save(model: keras.Model, export_dir: pathlib.Path, input_shape: tuple[int, int, int]) -> None:
    serving = _Serving(model, input_shape)
    tf.saved_model.save(serving, str(export_dir), signatures={SIGNATURE: serving.serve})
