"""The records' format: 8 float features and a float target, y = w.x + 0.5 + noise."""

import numpy as np
import tensorflow as tf

FEATURES = 8
WEIGHTS = np.linspace(-1.0, 1.0, FEATURES).astype(np.float32)


def parse(record):
    parsed = tf.io.parse_single_example(
        record,
        {"x": tf.io.FixedLenFeature([FEATURES], tf.float32), "y": tf.io.FixedLenFeature([1], tf.float32)},
    )
    return parsed["x"], parsed["y"]


def write(path: str, examples: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(examples, FEATURES)).astype(np.float32)
    y = x @ WEIGHTS + 0.5 + rng.normal(scale=0.1, size=examples).astype(np.float32)
    with tf.io.TFRecordWriter(path) as out:
        for features, target in zip(x, y, strict=True):
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "x": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
                        "y": tf.train.Feature(float_list=tf.train.FloatList(value=[target])),
                    }
                )
            )
            out.write(example.SerializeToString())
