"""A regression on TFRecord shards in a bucket: the worked example of docs/your-model.md.

The shards come from make_data.py; `--task-param train=...` and `eval=...` say where they are, as
globs on a folder, gs:// or s3://. The package is named `trainer`, the layout Vertex AI documents
(trainer/task.py beside the rest of the task's code).
"""

import keras
import tensorflow as tf

import pml_trainer
from trainer import model as networks
from trainer.records import FEATURES, parse

# An epoch, in examples: one pass over what make_data.py writes by default (8 shards of 512). The
# trainer repeats the data endlessly, so an epoch is a number of steps; without this it would read
# every shard once more at the start to count them.
EXAMPLES_PER_EPOCH = 4096
PARSED_AT_ONCE = 256


def model(params):
    return networks.build(FEATURES, params.get("units", 32))


def train_data(params, shard):
    # This reader's share of the shards, as local paths: under mirrored workers each reads its own
    # files, under parameter servers every worker reads them all. Examples one by one, unbatched:
    # the trainer shuffles, repeats, batches and prefetches them.
    files = shard.files(params["train"])
    return _examples(files)


def eval_data(params):
    return _examples(pml_trainer.files(params["eval"]))


def _examples(files):
    # Four files at a time, a record from each in turn, so that a batch mixes files; records
    # parsed 256 at a time (tf.data's guide, tensorflow.org/guide/data_performance, "Vectorizing
    # mapping"), then handed on one by one. The files are local (the data cache), and reading them
    # in parallel threads (num_parallel_reads) was slower here, not faster: bench/RESULTS.md,
    # "TFRecord shards: the input pipeline".
    records = tf.data.Dataset.from_tensor_slices(files).interleave(tf.data.TFRecordDataset, cycle_length=4)
    return records.batch(PARSED_AT_ONCE).map(parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def loss(params):
    return keras.losses.MeanSquaredError()


def metrics(params):
    return [keras.metrics.MeanAbsoluteError(name="mae")]


def optimizer(params):
    return keras.optimizers.Adam(params.get("learning_rate", 0.01))
