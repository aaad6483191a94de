"""The study's task as a task module: its MLP or flower CNN (--model) classifying the images of
--dataset, as any user's task would define it (docs/your-model.md).

`params` are the trainer's own flags for the network and the data (`PARAMS`), which the trainer
passes here as a user's task gets its --task-param values.
"""

from __future__ import annotations

import functools
import json

from pml_trainer import data, export, models
from pml_trainer.options import TrainOptions

PARAMS = (
    "dataset",
    "data_dir",
    "train_examples",
    "validation_split",
    "model",
    "hidden_layers",
    "neurons",
    "seed",
    "s3_endpoint",
)


def model(params):
    splits = _splits(params)
    return models.build(_options(params), splits.input_shape, splits.num_classes)


def train_data(params, shard):
    return _splits(params).train()


def validation_data(params):
    """The held-out part of the training split: the study's per-epoch validation figures."""
    split = _splits(params).validation
    return None if split is None else split()


def eval_data(params):
    return _splits(params).test()


def serving(model):
    """uint8 images in, probabilities and the class out (pml_trainer.export)."""
    return export.image_classifier(model)


def _options(params) -> TrainOptions:
    return TrainOptions(**{k: v for k, v in params.items() if v is not None})


def _splits(params) -> data.Splits:
    return _cached_splits(json.dumps(params, sort_keys=True))


@functools.cache
def _cached_splits(key: str) -> data.Splits:
    return data.load(_options(json.loads(key)))
