"""Local dataset files checked before any task starts, with the standard library alone.

`pmlctl submit` runs these checks (it never imports TensorFlow or numpy), and so does the trainer
before it reads the data. A file that is not what it claims to be is refused in one line that
names it, with the data exit code (3); nothing is created or downloaded on the way.
"""

from __future__ import annotations

import ast
import gzip
import os
import pathlib
import struct
import zipfile

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# The first bytes of each image format the image loader decodes.
IMAGE_MAGIC = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".gif": (b"GIF87a", b"GIF89a"),
    ".bmp": (b"BM",),
}


class BadData(ValueError):
    """A dataset the user must fix; the message names the file."""


def check(dataset: str, data_dir: str | None) -> None:
    """Raise BadData for the first local dataset file that cannot be what it claims to be.
    Remote locations (gs://, s3://) and datasets that are downloaded are the trainer's to check."""
    if "://" in dataset or (data_dir and "://" in data_dir):
        return
    if dataset.startswith("npz:"):
        npz(pathlib.Path(dataset[4:]))
    elif dataset.startswith("images:"):
        image_folder(pathlib.Path(dataset[len("images:") :]), f"--dataset {dataset}")
    elif dataset == "fashion_mnist" and data_dir:
        idx_folder(pathlib.Path(data_dir))
    elif dataset == "flowers" and data_dir:
        image_folder(pathlib.Path(data_dir), f"--data-dir {data_dir}")


def npz(path: pathlib.Path) -> None:
    where = f"--dataset npz:{path}"
    _readable_file(path, where)
    if not zipfile.is_zipfile(path):
        raise BadData(
            f"{where}: not an .npz file (numpy.savez writes a zip archive); save it with "
            f"numpy.savez(FILE, {', '.join(f'{a}=...' for a in NPZ_ARRAYS)})"
        )
    with zipfile.ZipFile(path) as archive:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        missing = [a for a in NPZ_ARRAYS if a not in members]
        if missing:
            raise BadData(f"{where}: arrays {', '.join(missing)} are missing; save x_train, y_train, x_test and y_test")
        for array in NPZ_ARRAYS:
            with archive.open(members[array]) as member:
                dtype = _npy_dtype(member.read(4096))
            if dtype is None:
                raise BadData(f"{where}: array {array} is not a numpy array; save the file again with numpy.savez")
            if "O" in dtype:
                # numpy refuses to unpickle object arrays unless told to, which would run code from the file.
                raise BadData(
                    f"{where}: array {array} holds Python objects (pickled), not numbers; save numeric "
                    "arrays (images as uint8 or float32, labels as integers)"
                )


def _npy_dtype(head: bytes) -> str | None:
    """The dtype string of an .npy header (numpy/lib/format.py: magic, version, length, dict)."""
    if not head.startswith(b"\x93NUMPY") or len(head) < 10:
        return None
    size_format, start = ("<H", 10) if head[6] == 1 else ("<I", 12)  # format versions 1, and 2 or 3
    (length,) = struct.unpack(size_format, head[8:start])
    try:
        header = ast.literal_eval(head[start : start + length].decode("latin1"))
    except (ValueError, SyntaxError):
        return None
    return str(header.get("descr")) if isinstance(header, dict) else None


def idx_folder(folder: pathlib.Path) -> None:
    """fashion_mnist's gzipped IDX files that are there, each whole: header, dimensions, then every
    byte. Missing ones are downloaded into the folder, which must exist: a mistyped --data-dir is
    never created."""
    if not folder.is_dir():
        raise BadData(
            f"--data-dir {folder}: the folder does not exist; give the folder that holds "
            f"{', '.join(FASHION_MNIST_FILES)} (or leave --data-dir out)"
        )
    for name in FASHION_MNIST_FILES:
        path = folder / name
        if not path.exists():
            continue
        _readable_file(path, f"--data-dir {folder}")
        try:
            with gzip.open(path, "rb") as f:
                zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
                dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
                expected = 1
                for d in dims:
                    expected *= d
                got = _length(f)
        except (OSError, EOFError, struct.error) as err:
            raise BadData(f"{path}: not a whole gzipped IDX file ({err}); download it again") from None
        if zero != 0 or dtype != 0x08:
            raise BadData(f"{path}: not an IDX file of unsigned bytes; download it again")
        if got != expected:
            raise BadData(f"{path}: truncated: {got} of {expected} bytes after its header; download it again")


def _length(stream) -> int:
    total = 0
    while chunk := stream.read(1 << 20):
        total += len(chunk)
    return total


def image_folder(folder: pathlib.Path, where: str) -> None:
    """A folder of class folders of images, each readable and of the format its suffix says."""
    if not folder.is_dir():
        raise BadData(f"{where}: the folder does not exist; give a folder with one subfolder of images per class")
    for path in sorted(folder.rglob("*")):
        magic = IMAGE_MAGIC.get(path.suffix.lower())
        if magic is None or not path.is_file():
            continue
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as err:
            raise BadData(f"{path}: cannot read it ({err.strerror}); fix its permissions or remove it") from None
        if not head.startswith(magic):
            raise BadData(f"{path}: not a {path.suffix.lstrip('.').upper()} image; remove it or convert it")


def _readable_file(path: pathlib.Path, where: str) -> None:
    if not path.is_file():
        raise BadData(f"{where}: {path} is not there; give the path of an existing file")
    if not os.access(path, os.R_OK):
        raise BadData(f"{where}: {path} cannot be read; fix its permissions")
