"""Datasets as `tf.data` pipelines: train, validation and test splits of (image, label).

Images come out as float32 in [0, 1] with shape (H, W, C); labels as int32. Every source is
turned into splits here, so the training loop never knows where the data came from.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil
import struct
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from pml_trainer import data_cache, datacheck
from pml_trainer.log import log
from pml_trainer.options import TrainOptions
from pml_trainer.storage import StorageError, StorageUnavailable, is_remote

FASHION_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
FASHION_MNIST_FILES = datacheck.FASHION_MNIST_FILES
# Debian and Ubuntu ship the real fashion_mnist: `apt-get install dataset-fashion-mnist` puts the
# four files in /usr/share/datasets/fashion-mnist. PML_SYSTEM_DATASETS moves that root (tests).
SYSTEM_DATASETS = "/usr/share/datasets"
FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWER_SIZE = (64, 64)  # as in the study
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
SYNTHETIC_TEST_OFFSET = 1 << 30  # test examples are drawn from indices no training example uses
# Class patterns under heavy noise: an MLP learns from the first epoch and gets past 90% in a
# few, as on fashion_mnist, rather than a trivial 100%, so that sweeps can tell models apart.
# (Fainter patterns under less noise, as hard in the end, leave a long plateau at chance first.)
CONTRAST, NOISE = 0.3, 0.6


class DataUnavailable(RuntimeError):
    """A dataset that cannot be read or fetched; the message says where to put it."""


@dataclass
class Splits:
    """Unbatched, finite datasets of one source, plus what the model needs to know about it.

    The splits are functions that build a dataset, not datasets: under ParameterServerStrategy
    each worker builds its own input pipeline, and a dataset made on the chief cannot be sent.
    """

    train: Callable[[], tf.data.Dataset]
    validation: Callable[[], tf.data.Dataset] | None
    test: Callable[[], tf.data.Dataset]
    train_size: int
    input_shape: tuple[int, int, int]
    num_classes: int


def load(opts: TrainOptions) -> Splits:
    shape = opts.synthetic_shape()
    if shape is not None:
        return _synthetic(opts, shape)
    _checked(datacheck.check, opts.dataset, opts.data_dir)
    if opts.dataset == "fashion_mnist":
        x_train, y_train, x_test, y_test = _fashion_mnist(_fashion_mnist_dir(opts))
        return _from_arrays(opts, x_train, y_train, x_test, y_test)
    if opts.dataset.startswith("npz:"):
        return _from_npz(opts, _local(opts, opts.dataset[4:], data_cache.local_file))
    return _from_folders(opts, image_folder(opts))


def image_folder(opts: TrainOptions) -> pathlib.Path:
    """The local folder of an image dataset, downloaded first when it is remote or not here yet.

    Under ParameterServerStrategy the chief builds the pipeline and the workers run it, with the
    chief's file paths in it. The download location depends only on the dataset's URI, so a
    worker that calls this on its own machine gets its copy at the same paths.
    """
    if opts.dataset.startswith("images:"):
        return _local(opts, opts.dataset[len("images:") :], data_cache.local_folder)
    return _flowers(_data_dir(opts, "flower_photos"))


def _local(opts: TrainOptions, where: str, fetch: Callable[[str, str | None], pathlib.Path]) -> pathlib.Path:
    """A local path as it is; a gs:// or s3:// one through the local cache."""
    if not is_remote(where):
        return pathlib.Path(where)
    try:
        return fetch(where, opts.s3_endpoint)
    except StorageUnavailable:
        raise  # an outage, which reads waited out for a while already: retryable, not missing data
    except StorageError as err:
        raise DataUnavailable(str(err)) from None


def _data_dir(opts: TrainOptions, name: str) -> pathlib.Path:
    if opts.data_dir:
        return _local(opts, opts.data_dir, data_cache.local_folder)
    return pathlib.Path(os.environ.get("KERAS_HOME", pathlib.Path.home() / ".keras")) / "datasets" / name


def _fashion_mnist_dir(opts: TrainOptions) -> pathlib.Path:
    """--data-dir, else the Keras cache when it has the files, else Debian's package, else the
    Keras cache, to download into."""
    cache = _data_dir(opts, "fashion-mnist")
    system = pathlib.Path(os.environ.get("PML_SYSTEM_DATASETS", SYSTEM_DATASETS)) / "fashion-mnist"
    if opts.data_dir or _has_files(cache) or not _has_files(system):
        return cache
    return system


def _has_files(folder: pathlib.Path) -> bool:
    return all((folder / name).is_file() for name in FASHION_MNIST_FILES)


# --- synthetic -------------------------------------------------------------------------------


def _synthetic(opts: TrainOptions, shape: tuple[int, int, int]) -> Splits:
    """A learnable, seed-deterministic task: each class is a fixed random pattern plus noise.

    Examples are generated inside the pipeline from their index, so a worker receives only a
    few scalars and the class prototypes, never the data itself.
    """
    classes = 10
    prototypes = tf.random.stateless_uniform((classes, *shape), seed=(opts.seed, 0))
    seed = opts.seed

    def example(index):
        pair = tf.stack([tf.cast(seed, tf.int64), index])
        label = tf.random.stateless_uniform((), pair, maxval=classes, dtype=tf.int32)
        noise = tf.random.stateless_normal(shape, pair + [0, 1 << 40], stddev=NOISE)  # noqa: RUF005 (a tensor sum)
        image = tf.clip_by_value(0.5 + CONTRAST * (tf.gather(prototypes, label) - 0.5) + noise, 0.0, 1.0)
        return image, label

    total = opts.train_examples or 60_000
    n_val = int(total * opts.validation_split)

    def indices(start: int, stop: int):
        return lambda: tf.data.Dataset.range(start, stop).map(example, num_parallel_calls=tf.data.AUTOTUNE)

    val = indices(total - n_val, total) if n_val else None
    test = indices(SYNTHETIC_TEST_OFFSET, SYNTHETIC_TEST_OFFSET + max(total // 6, 1))
    return Splits(indices(0, total - n_val), val, test, total - n_val, shape, classes)


# --- arrays (fashion_mnist, npz) ---------------------------------------------------------------


def _from_arrays(opts, x_train, y_train, x_test, y_test) -> Splits:
    x_train, x_test = _as_images(x_train), _as_images(x_test)
    if opts.train_examples:
        x_train, y_train = x_train[: opts.train_examples], y_train[: opts.train_examples]
    n_val = int(len(x_train) * opts.validation_split)
    n_train = len(x_train) - n_val
    classes = int(max(y_train.max(), y_test.max())) + 1

    def to_ds(x, y):
        return lambda: tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32))).map(_scale)

    val = to_ds(x_train[n_train:], y_train[n_train:]) if n_val else None
    return Splits(
        to_ds(x_train[:n_train], y_train[:n_train]),
        val,
        to_ds(x_test, y_test),
        n_train,
        tuple(x_train.shape[1:]),
        classes,
    )


def _as_images(x: np.ndarray) -> np.ndarray:
    return x[..., np.newaxis] if x.ndim == 3 else x


def _scale(image, label):
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0, label
    return tf.cast(image, tf.float32), label


def _checked(check: Callable, *args) -> None:
    try:
        check(*args)
    except datacheck.BadData as err:
        raise DataUnavailable(str(err)) from None


def _from_npz(opts: TrainOptions, path: pathlib.Path) -> Splits:
    _checked(datacheck.npz, path)  # the downloaded copy of a remote file too
    with np.load(path) as arrays:
        return _from_arrays(opts, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"])


def _fashion_mnist(folder: pathlib.Path):
    for name in FASHION_MNIST_FILES:
        if not (folder / name).is_file():
            _download(
                os.environ.get("PML_FASHION_MNIST_URL", FASHION_MNIST_URL) + name,
                folder / name,
                f"install them (`apt-get install dataset-fashion-mnist` on Debian or Ubuntu), or put the "
                f"four files {', '.join(FASHION_MNIST_FILES)} into {folder}",
            )
    return tuple(_read_idx(folder / name) for name in FASHION_MNIST_FILES)


def _read_idx(path: pathlib.Path) -> np.ndarray:
    """Read an IDX file (the MNIST format): magic, dimensions, then unsigned bytes."""
    with gzip.open(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise DataUnavailable(f"{path} is not an IDX file of unsigned bytes; download it again")
        dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(dims)


def _download(url: str, target: pathlib.Path, where_to_put_it: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    log.info(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=30) as reply, open(partial, "wb") as out:
            shutil.copyfileobj(reply, out)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise DataUnavailable(f"cannot download {url} ({_reason(err)}); offline? {where_to_put_it}") from None
    partial.rename(target)


def _reason(err: OSError) -> str:
    return str(getattr(err, "reason", None) or err)


# --- image folders (flowers, images:<dir>) -----------------------------------------------------


def _flowers(folder: pathlib.Path) -> pathlib.Path:
    if folder.is_dir():
        return folder
    archive = folder.with_suffix(".tgz")
    if not archive.is_file():
        _download(
            os.environ.get("PML_FLOWERS_URL", FLOWERS_URL),
            archive,
            f"unpack flower_photos.tgz so that {folder} holds one folder of JPEGs per class",
        )
    shutil.unpack_archive(archive, folder.parent)
    return folder


def _from_folders(opts: TrainOptions, folder: pathlib.Path) -> Splits:
    """One sub-folder per class; the order of class names gives the label."""
    if not folder.is_dir():
        raise DataUnavailable(f"image folder {folder} does not exist; give a folder with one sub-folder per class")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(path))
                labels.append(label)
    if len(classes) < 2 or not files:
        raise DataUnavailable(f"{folder} needs at least two class folders with images in them")
    order = np.random.default_rng(opts.seed).permutation(len(files))
    files, labels = np.array(files)[order], np.array(labels, dtype=np.int32)[order]
    n_test = max(len(files) // 10, 1)
    train_files, train_labels = files[n_test:], labels[n_test:]
    if opts.train_examples:
        train_files, train_labels = train_files[: opts.train_examples], train_labels[: opts.train_examples]
    n_val = int(len(train_files) * opts.validation_split)
    n_train = len(train_files) - n_val

    def decode(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(tf.cast(image, tf.float32) / 255.0, FLOWER_SIZE), label

    def to_ds(f, y):
        return lambda: tf.data.Dataset.from_tensor_slices((f, y)).map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    val = to_ds(train_files[n_train:], train_labels[n_train:]) if n_val else None
    return Splits(
        to_ds(train_files[:n_train], train_labels[:n_train]),
        val,
        to_ds(files[:n_test], labels[:n_test]),
        n_train,
        (*FLOWER_SIZE, 3),
        len(classes),
    )
