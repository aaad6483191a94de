"""The SavedModel a job leaves behind, made to be served as it is.

Its `serving_default` signature is the model's own: its inputs, named as the model names them,
and its outputs. A task may define `serving(model)` to give its own signatures instead: one
`tf.function` with an input signature (it becomes `serving_default`), or a dict of them by name.

The built-in image tasks use `image_classifier`: images in as the dataset stores them, uint8
pixels (a single-channel image without its channel axis, as fashion_mnist's 28x28), and each
class's probability and the most likely class out. Scaling to [0, 1] happens inside, so a server
never has to know that the model trained on pixels divided by 255: raw pixels given to a bare
Keras export lost two points of accuracy without any error.
"""

from __future__ import annotations

import pathlib

import keras
import tensorflow as tf

SIGNATURE = "serving_default"
INPUT = "images"
OUTPUTS = ("probabilities", "class")


def save(model: keras.Model, export_dir: pathlib.Path, signatures=None, example_features=None) -> None:
    """Write `model` with `signatures` (a task's `serving(model)`), else with its own inputs and
    outputs; `example_features` (a spec of one batch's features) stands in for the inputs of a
    model that declares none, a subclassed one."""
    holder = tf.Module()
    holder.model = model
    if signatures is None:
        signatures = _own_signature(model, example_features)
    if not isinstance(signatures, dict):
        signatures = {SIGNATURE: signatures}
    holder.serving_functions = signatures  # tracked, so that what they capture is saved with them
    tf.saved_model.save(holder, str(export_dir), signatures=signatures)


def _own_signature(model: keras.Model, example_features):
    inputs = getattr(model, "inputs", None)
    if inputs:
        specs = [tf.TensorSpec(i.shape, i.dtype, name=_input_name(i, n)) for n, i in enumerate(inputs)]
    else:
        specs = tf.nest.flatten(example_features)
    structure = example_features if not inputs else (specs[0] if len(specs) == 1 else specs)

    def serve(*flat):
        features = (
            tf.nest.pack_sequence_as(structure, list(flat))
            if not inputs
            else (flat[0] if len(flat) == 1 else list(flat))
        )
        return _named_outputs(model(features, training=False))

    return tf.function(serve, input_signature=specs)


def _input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    return name.split(":")[0]


def _named_outputs(outputs) -> dict:
    if isinstance(outputs, dict):
        return outputs
    flat = tf.nest.flatten(outputs)
    return {"outputs": flat[0]} if len(flat) == 1 else {f"output_{i}": t for i, t in enumerate(flat)}


def image_classifier(model: keras.Model):
    """uint8 images in, probabilities and the class out, for a classifier of [0, 1] images that
    outputs logits (the built-in tasks)."""
    height, width, channels = model.inputs[0].shape[1:]
    stored = [None, height, width] if channels == 1 else [None, height, width, channels]

    @tf.function(input_signature=[tf.TensorSpec(stored, tf.uint8, name=INPUT)])
    def serve(images):
        pixels = tf.cast(images, tf.float32) / 255.0
        if channels == 1:
            pixels = pixels[..., tf.newaxis]
        logits = model(pixels, training=False)
        return {OUTPUTS[0]: tf.nn.softmax(logits), OUTPUTS[1]: tf.argmax(logits, -1, output_type=tf.int32)}

    return serve
