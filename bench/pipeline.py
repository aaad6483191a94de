"""The input pipelines alone: examples/s of the training stream, without training, for every kind
of dataset. The trainer must never wait for them, so each should run well above what training
takes from it (bench/throughput.py).

Kinds: arrays (the real fashion_mnist), an image folder of JPEGs (decoded and resized to 64x64,
with and without --augment), synthetic 28x28x1, and synthetic 64x64x3 cached (5120 images) and
generated on every pass (54000 images, past the cache's limit). The first pass reads, decodes
and caches; the figure that counts is the median of the passes after it.

    .venv/bin/python bench/pipeline.py [--batch-size 256] [--passes 4] [--images 2000]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from pml_trainer import data, pipeline
from pml_trainer.options import TrainOptions

PHOTO = (240, 320)  # about the size of a tf_flowers photo


def write_photos(folder: pathlib.Path, count: int, classes: int = 5) -> None:
    """JPEGs of smooth random colour fields, as large as the flowers' photos."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True)
    for i in range(count):
        coarse = rng.integers(0, 256, (PHOTO[0] // 16, PHOTO[1] // 16, 3), dtype=np.uint8)
        photo = tf.image.resize(coarse[np.newaxis], PHOTO)[0]
        jpeg = tf.io.encode_jpeg(tf.cast(photo, tf.uint8), quality=90).numpy()
        (folder / f"class{i % classes}" / f"{i}.jpg").write_bytes(jpeg)


def passes(opts: TrainOptions, count: int) -> list[float]:
    """Examples/s of `count` passes over the training split, as the trainer's stream gives them."""
    splits = data.load(opts)
    steps = splits.train_size // opts.batch_size
    iterator = iter(
        pipeline.training_stream(
            lambda count, index: splits.train(), opts.batch_size, opts.seed, augment=opts.augment
        )()
    )
    rates = []
    for _ in range(count):
        started = time.monotonic()
        for _ in range(steps):
            next(iterator)
        rates.append(steps * opts.batch_size / (time.monotonic() - started))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--images", type=int, default=2000, help="JPEGs in the image folder")
    args = p.parse_args()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="photos-"))
    write_photos(folder, args.images)
    kinds = [
        ("arrays: fashion_mnist", {"dataset": "fashion_mnist"}),
        ("image folder, JPEGs 320x240 to 64x64", {"dataset": f"images:{folder}"}),
        ("image folder, with --augment", {"dataset": f"images:{folder}", "augment": True}),
        ("synthetic 28x28x1", {"dataset": "synthetic"}),
        ("synthetic 64x64x3, 5120 (cached)", {"dataset": "synthetic:64x64x3", "train_examples": 5120}),
        ("synthetic 64x64x3, 54000 (generated each pass)", {"dataset": "synthetic:64x64x3"}),
    ]
    print(
        f"machine: {os.cpu_count()} cores; batch {args.batch_size}; load average "
        f"{pathlib.Path('/proc/loadavg').read_text().split()[0]}"
    )
    print("| pipeline | first pass (examples/s) | later passes (median) |")
    print("| --- | --- | --- |")
    for name, flags in kinds:
        rates = passes(TrainOptions(batch_size=args.batch_size, **flags), args.passes)
        print(f"| {name} | {rates[0]:.0f} | {statistics.median(rates[1:]):.0f} |", flush=True)


if __name__ == "__main__":
    main()
