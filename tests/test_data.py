"""Datasets: each source read for real, from small files the tests write."""

from __future__ import annotations

import gzip
import http.server
import pathlib
import struct
import threading

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from pml_trainer import data, pipeline  # noqa: E402
from pml_trainer.options import TrainOptions  # noqa: E402


def take_all(split):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in split()], strict=False)
    return np.stack(xs), np.array(ys)


def write_idx(path, array: np.ndarray):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(folder, n_train=50, n_test=20):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return arrays


def test_fashion_mnist_from_idx_files(tmp_path):
    arrays = fake_fashion_mnist(tmp_path)
    splits = data.load(TrainOptions(dataset="fashion_mnist", data_dir=str(tmp_path), validation_split=0.2))
    assert (splits.train_size, splits.input_shape, splits.num_classes) == (40, (28, 28, 1), 10)
    x, y = take_all(splits.train)
    np.testing.assert_allclose(x[..., 0], arrays["train-images-idx3-ubyte.gz"][:40] / 255.0, rtol=1e-6)
    assert list(y) == list(arrays["train-labels-idx1-ubyte.gz"][:40])
    assert len(take_all(splits.validation)[1]) == 10 and len(take_all(splits.test)[1]) == 20


def test_fashion_mnist_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_FASHION_MNIST_URL", "http://127.0.0.1:9/")  # the discard port: refused
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataUnavailable) as err:
        data.load(TrainOptions(dataset="fashion_mnist", data_dir=str(tmp_path / "empty")))
    message = str(err.value)
    assert "cannot download http://127.0.0.1:9/train-images-idx3-ubyte.gz" in message
    assert f"into {tmp_path / 'empty'}" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert not list((tmp_path / "empty").glob("*.part"))


def test_fashion_mnist_from_debians_package_when_the_keras_cache_lacks_it(tmp_path, monkeypatch):
    arrays = fake_fashion_mnist(tmp_path / "system" / "fashion-mnist")
    monkeypatch.setenv("PML_SYSTEM_DATASETS", str(tmp_path / "system"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("PML_FASHION_MNIST_URL", "http://127.0.0.1:9/")  # no download may happen
    splits = data.load(TrainOptions(dataset="fashion_mnist", validation_split=0.0))
    assert splits.train_size == 50 and list(take_all(splits.train)[1]) == list(arrays["train-labels-idx1-ubyte.gz"])
    assert not (tmp_path / "keras").exists()  # nothing created, nothing downloaded


def test_without_data_the_error_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_SYSTEM_DATASETS", str(tmp_path / "none"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("PML_FASHION_MNIST_URL", "http://127.0.0.1:9/")
    with pytest.raises(data.DataUnavailable) as err:
        data.load(TrainOptions(dataset="fashion_mnist"))
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and "--data-dir" not in str(err.value)


REAL = pathlib.Path(data.SYSTEM_DATASETS) / "fashion-mnist"


@pytest.mark.skipif(
    not REAL.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (`make test` installs it where it runs as root with apt)",
)
def test_the_real_fashion_mnist_from_debian(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("PML_SYSTEM_DATASETS", raising=False)
    splits = data.load(TrainOptions(dataset="fashion_mnist", validation_split=0.0))
    assert (splits.train_size, splits.input_shape, splits.num_classes) == (60_000, (28, 28, 1), 10)
    labels = take_all(splits.test)[1]
    assert len(labels) == 10_000 and np.bincount(labels).tolist() == [1000] * 10  # the real test split


def test_fashion_mnist_is_downloaded_once(tmp_path, monkeypatch):
    fake_fashion_mnist(tmp_path / "mirror")
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path / "mirror"), **kwargs)

        def log_message(self, fmt, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PML_FASHION_MNIST_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    (tmp_path / "cache").mkdir()
    opts = TrainOptions(dataset="fashion_mnist", data_dir=str(tmp_path / "cache"))
    try:
        assert data.load(opts).train_size == 45
        assert len(requests) == 4
        assert data.load(opts).train_size == 45
        assert len(requests) == 4  # the second run found the files and downloaded nothing
    finally:
        server.shutdown()


def test_npz_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x_train=np.ones((30, 8, 8), np.float32),
        y_train=np.arange(30) % 3,
        x_test=np.zeros((6, 8, 8), np.float32),
        y_test=np.arange(6) % 3,
    )
    splits = data.load(TrainOptions(dataset=f"npz:{path}", validation_split=0.0))
    assert (splits.train_size, splits.input_shape, splits.num_classes, splits.validation) == (30, (8, 8, 1), 3, None)
    np.savez(path, x_train=np.ones((3, 2, 2)))
    with pytest.raises(data.DataUnavailable, match="arrays y_train, x_test, y_test are missing"):
        data.load(TrainOptions(dataset=f"npz:{path}"))


def test_image_folders_are_resized_to_64x64_rgb(tmp_path):
    for label, name in enumerate(["daisy", "tulips"]):
        (tmp_path / name).mkdir()
        for i in range(10):
            pixels = tf.fill((20 + i, 30, 3), tf.constant(label * 200, tf.uint8))
            (tmp_path / name / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    (tmp_path / "tulips" / "notes.txt").write_text("not an image")
    splits = data.load(TrainOptions(dataset=f"images:{tmp_path}", validation_split=0.0))
    assert (splits.input_shape, splits.num_classes) == ((64, 64, 3), 2)
    x, y = take_all(splits.train)
    assert x.shape == (18, 64, 64, 3) and len(take_all(splits.test)[1]) == 2
    # Each image keeps its class: daisies are black, tulips bright.
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), np.where(y == 1, 200 / 255, 0.0), atol=1e-5)


@pytest.mark.parametrize("augment", [False, True])
def test_augmentation_flips_and_varies_contrast_on_each_pass(tmp_path, augment):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(8):
            pixels = tf.concat(
                [tf.fill((32, 16, 3), tf.constant(200, tf.uint8)), tf.fill((32, 16, 3), tf.constant(50, tf.uint8))],
                axis=1,
            )  # bright left half
            (tmp_path / name / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    splits = data.load(TrainOptions(dataset=f"images:{tmp_path}", validation_split=0.0))
    stream = stream_of(splits, per_replica_batch=7, seed=3, augment=augment)
    x = np.concatenate([batch for batch, _ in stream().take(20).as_numpy_iterator()])
    assert x.min() >= 0.0 and x.max() <= 1.0
    left_minus_right = x[:, :, :32].mean(axis=(1, 2, 3)) - x[:, :, 32:].mean(axis=(1, 2, 3))
    flipped = left_minus_right < 0
    contrast = np.abs(left_minus_right)
    if augment:  # some flipped, some not; the contrast drawn from 0.8 to 1.2 of the original
        assert 0.3 < flipped.mean() < 0.7
        assert contrast.min() < 0.95 * np.median(contrast) and contrast.max() > 1.05 * np.median(contrast)
    else:
        assert not flipped.any()
        np.testing.assert_allclose(contrast, contrast[0], rtol=1e-5)


def test_missing_image_folder(tmp_path):
    with pytest.raises(data.DataUnavailable, match="does not exist"):
        data.load(TrainOptions(dataset=f"images:{tmp_path}/nope"))


def test_synthetic_is_deterministic_per_seed_and_shaped_as_asked():
    def first_images(seed, dataset="synthetic"):
        return take_all(lambda: data.load(TrainOptions(dataset=dataset, seed=seed, train_examples=50)).train().take(5))

    (a, la), (b, lb), (c, _) = first_images(1), first_images(1), first_images(2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert a.shape == (5, 28, 28, 1) and a.min() >= 0.0 and a.max() <= 1.0
    assert first_images(1, "synthetic:16x16x3")[0].shape == (5, 16, 16, 3)


def stream_of(splits, per_replica_batch, seed, augment=False):
    """The trainer's stream of a built-in dataset's training split, one input pipeline."""
    return pipeline.training_stream(lambda count, index: splits.train(), per_replica_batch, seed, augment=augment)


def numbered_examples(tmp_path, n=100):
    """An npz dataset whose every training image holds its own index."""
    path = tmp_path / "numbered.npz"
    np.savez(
        path,
        x_train=np.arange(n, dtype=np.float32).reshape(n, 1, 1) * np.ones((1, 2, 2), np.float32),
        y_train=np.arange(n) % 10,
        x_test=np.zeros((10, 2, 2), np.float32),
        y_test=np.arange(10),
    )
    return data.load(TrainOptions(dataset=f"npz:{path}", validation_split=0.0))


def passes_of(stream, batches_per_pass: int, count: int) -> list[list[int]]:
    ids = [int(v) for x, _ in stream().take(batches_per_pass * count).as_numpy_iterator() for v in x[:, 0, 0, 0]]
    size = len(ids) // count
    return [ids[i * size : (i + 1) * size] for i in range(count)]


def test_each_pass_over_data_in_memory_is_a_new_permutation(tmp_path):
    """Batches are gathered from the whole split held in memory (issue 16): every pass shows each
    example at most once, all but the last incomplete batch's worth, in an order of its own."""
    splits = numbered_examples(tmp_path)
    first, second, third = passes_of(stream_of(splits, 32, seed=7), 3, 3)  # 100 = 3 x 32 + 4
    for one_pass in (first, second, third):
        assert len(set(one_pass)) == 96 and set(one_pass) <= set(range(100))
    assert first != second != third
    assert passes_of(stream_of(splits, 32, seed=7), 3, 3)[0] == first  # seeded: repeatable
    assert passes_of(stream_of(splits, 32, seed=8), 3, 1)[0] != first


def test_without_a_seed_each_pipeline_draws_its_own_order(tmp_path):
    """The parameter-server case: every worker's pipeline shuffles differently."""
    splits = numbered_examples(tmp_path)
    orders = [passes_of(stream_of(splits, 32, seed=None), 3, 1)[0] for _ in range(2)]
    assert orders[0] != orders[1] and sorted(orders[0]) != orders[0]


def test_augmentation_draws_a_contrast_for_each_image_of_a_batch():
    """tf.image.random_contrast on a batch would scale every image of it by the same factor."""
    images = tf.concat([tf.fill((64, 8, 4, 3), 0.8), tf.fill((64, 8, 4, 3), 0.2)], axis=2)
    varied, _ = pipeline._vary(images, tf.zeros(64, tf.int32))
    spread = np.abs(varied[:, :, :4].numpy().mean(axis=(1, 2, 3)) - varied[:, :, 4:].numpy().mean(axis=(1, 2, 3)))
    assert spread.min() < 0.95 * 0.6 and spread.max() > 1.05 * 0.6  # the original difference is 0.6
    assert np.all((spread >= 0.8 * 0.6 - 1e-5) & (spread <= 1.2 * 0.6 + 1e-5))
