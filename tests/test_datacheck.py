"""Local datasets are checked before any task starts: a file that is not what it claims to be is
refused in one line that names it, with exit code 3, and nothing is created (issue 14, items 3, 9)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from deploy.cli import app
from pml_trainer import datacheck, exits


def submit(*args: str, home) -> object:
    return CliRunner().invoke(app, ["submit", "--workers", "1", "--ps", "1", *args], env={"PML_HOME": str(home)})


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def idx(path, array) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion(tmp_path):
    folder = tmp_path / "fm"
    folder.mkdir()
    for name, shape in zip(datacheck.FASHION_MNIST_FILES, [(20, 28, 28), (20,), (10, 28, 28), (10,)], strict=False):
        idx(folder / name, np.zeros(shape))
    return folder


def test_a_file_that_is_not_an_npz(tmp_path):
    bad = tmp_path / "data.npz"
    bad.write_text("x_train,y_train\n1,2\n")
    result = submit("--dataset", f"npz:{bad}", home=tmp_path / "home")
    assert result.exit_code == exits.DATA_UNAVAILABLE
    assert (
        one_line(result) == f"error: --dataset npz:{bad}: not an .npz file (numpy.savez writes a zip archive); "
        "save it with numpy.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)"
    )
    assert not (tmp_path / "home" / "jobs").exists()  # no job, no task


def test_an_npz_of_pickled_objects(tmp_path):
    bad = tmp_path / "objects.npz"
    ragged = np.empty(2, dtype=object)
    ragged[:] = [[1, 2], [3]]
    np.savez(bad, x_train=ragged, y_train=np.arange(2), x_test=ragged, y_test=np.arange(2))
    line = one_line(submit("--dataset", f"npz:{bad}", home=tmp_path / "home"))
    assert f"npz:{bad}: array x_train holds Python objects (pickled)" in line


def test_a_good_npz_passes(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x_train=np.zeros((4, 8, 8)), y_train=np.arange(4), x_test=np.zeros((2, 8, 8)), y_test=np.arange(2))
    datacheck.check(f"npz:{good}", None)


def test_a_truncated_idx_file(fashion, tmp_path):
    images = fashion / "train-images-idx3-ubyte.gz"
    whole = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(whole[:-100]))
    result = submit("--dataset", "fashion_mnist", "--data-dir", str(fashion), home=tmp_path / "home")
    assert result.exit_code == exits.DATA_UNAVAILABLE
    assert (
        one_line(result) == f"error: {images}: truncated: {20 * 28 * 28 - 100} of {20 * 28 * 28} bytes "
        "after its header; download it again"
    )


def test_a_mistyped_data_dir_is_refused_and_not_created(tmp_path):
    wrong = tmp_path / "datsets"
    line = one_line(submit("--dataset", "fashion_mnist", "--data-dir", str(wrong), home=tmp_path / "home"))
    assert f"--data-dir {wrong}: the folder does not exist" in line and "(or leave --data-dir out)" in line
    assert not wrong.exists()


def test_an_image_folder_with_a_file_that_is_no_image(tmp_path):
    folder = tmp_path / "flowers"
    (folder / "roses").mkdir(parents=True)
    (folder / "roses" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (folder / "roses" / "b.jpg").write_text("<html>404 Not Found</html>")
    line = one_line(submit("--dataset", f"images:{folder}", home=tmp_path / "home"))
    assert line == f"error: {folder / 'roses' / 'b.jpg'}: not a JPG image; remove it or convert it"


def test_the_trainer_refuses_the_same_file_without_a_traceback(tmp_path):
    pytest.importorskip("tensorflow")
    from pml_trainer import data
    from pml_trainer.options import TrainOptions

    bad = tmp_path / "data.npz"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(data.DataUnavailable, match=r"not an \.npz file"):
        data.load(TrainOptions(dataset=f"npz:{bad}"))
