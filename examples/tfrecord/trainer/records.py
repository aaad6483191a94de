"""The records' format: 8 float features `x` and a float target `y`, one tf.train.Example each.

The data is a regression a newcomer can check by eye: y = w.x + 0.5 + noise, with the weights w
evenly spaced from -1 to 1, so a model that learnt it predicts 0.5 for x = (1, ..., 1).
"""

import numpy as np
import tensorflow as tf

FEATURES = 8
WEIGHTS = np.linspace(-1.0, 1.0, FEATURES).astype(np.float32)
SPEC = {"x": tf.io.FixedLenFeature([FEATURES], tf.float32), "y": tf.io.FixedLenFeature([1], tf.float32)}


def parse(records):
    """A batch of serialized Examples to (features, targets): one op for the whole batch, several
    times faster than an op per Example (bench/RESULTS.md, "TFRecord shards: the input pipeline")."""
    parsed = tf.io.parse_example(records, SPEC)
    return parsed["x"], parsed["y"]


def synthetic(examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(examples, FEATURES)).astype(np.float32)
    y = x @ WEIGHTS + 0.5 + rng.normal(scale=0.1, size=examples).astype(np.float32)
    return x, y.reshape(-1, 1)


def write(path: str, x: np.ndarray, y: np.ndarray) -> None:
    """A TFRecord file of one Example per row of x and y."""
    with tf.io.TFRecordWriter(path) as out:
        for features, target in zip(x, y, strict=True):
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "x": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
                        "y": tf.train.Feature(float_list=tf.train.FloatList(value=target)),
                    }
                )
            )
            out.write(example.SerializeToString())
