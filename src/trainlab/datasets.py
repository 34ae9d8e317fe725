"""Datasets read from files: scikit-learn's bundled digits, torchvision's MNIST, FashionMNIST
and CIFAR-10 (downloaded only with `download: true`, else read from files under `root`), and
your own CSV tables and image folders. In-memory loaders return numpy arrays
{x_train, y_train, x_test, y_test}; image_folder returns torch Datasets (data.DatasetSplits).
"""

from __future__ import annotations

import csv
import logging
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from trainlab.data import DatasetSplits
from trainlab.errors import DataError, first_line

log = logging.getLogger(__name__)

Arrays = dict[str, Any]


def digits(test_fraction: float, test_split_seed: int) -> Arrays:
    """scikit-learn's bundled 8x8 digits as (1, 8, 8) images in [0, 1]; a fixed test hold-out."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    return _hold_out(x, bunch.target.astype(np.int64), test_fraction, test_split_seed)


# ---- torchvision datasets: downloaded when online, or read from files put under root ----

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")  # fmt: skip


def mnist(root: str, download: bool, mean: float, std: float, variant: str = "MNIST") -> Arrays:
    """MNIST or FashionMNIST (variant) as (1, 28, 28) images, standardised with mean and std."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, variant)
    try:
        train, test = (cls(root, train=flag, download=download) for flag in (True, False))
    except Exception as e:
        folder = Path(root) / variant / "raw"
        raise DataError(
            f"dataset.root={root}: no {variant} files in {folder}"
            + (f" and the download failed ({first_line(e)})" if download else "")
            + f". Put {', '.join(MNIST_FILES)} (or their .gz) there"
            + ("" if download else ", or set dataset.download=true when online")
        ) from None

    def scale(images: torch.Tensor) -> np.ndarray:
        return ((images.float() / 255 - mean) / std)[:, None].numpy()

    return {
        "x_train": scale(train.data),
        "y_train": train.targets.numpy(),
        "x_test": scale(test.data),
        "y_test": test.targets.numpy(),
    }


CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def cifar10(root: str, download: bool, mean: Sequence[float], std: Sequence[float]) -> Arrays:
    """CIFAR-10 as (3, 32, 32) images standardised per channel, read from the python batches."""
    folder = Path(root) / CIFAR_FOLDER
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing and download:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(root, train=True, download=True)
        except Exception as e:
            raise DataError(
                f"dataset.root={root}: downloading CIFAR-10 failed ({first_line(e)}); put the "
                f"python batches ({', '.join(CIFAR_FILES)}) in {folder}"
            ) from None
        missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"dataset.root={root}: no CIFAR-10 files in {folder} (missing {', '.join(missing)}). "
            "Put the python batches of cifar-10-python.tar.gz there, or set dataset.download=true "
            "when online"
        )
    batches = [_read_cifar_batch(folder / name) for name in CIFAR_FILES]
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]

    def images(raw: np.ndarray) -> np.ndarray:
        return (raw.reshape(-1, 3, 32, 32).astype(np.float32) / 255 - m) / s

    return {
        "x_train": images(np.concatenate([b[0] for b in batches[:5]])),
        "y_train": np.concatenate([b[1] for b in batches[:5]]),
        "x_test": images(batches[5][0]),
        "y_test": batches[5][1],
    }


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's batches are pickles; allow the numpy array constructors (and the bytes codec that
    protocol-2 pickles of bytes use) and nothing else: a batch file cannot run code."""

    ALLOWED: ClassVar = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _ArraysOnly(f, encoding="latin1").load()
        data, labels = batch["data"], batch["labels"]
    except Exception as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({first_line(e)})") from None
    return np.asarray(data, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


# ---- your own data ----


def csv_table(
    path: str,
    target: str,
    features: Sequence[str] | None,
    task: str,
    test_path: str | None,
    test_fraction: float,
    test_split_seed: int,
) -> Arrays:
    """A table with a header row: `features` (null = every other column) as float inputs and
    `target` as class labels (task classification, any values, sorted) or floats (regression)."""
    train_rows, header = read_csv(Path(path), "dataset.path")
    if not train_rows:
        raise DataError(f"dataset.path={path}: the table is empty (a header and no rows)")
    columns = [c for c in header if c != target] if features is None else list(features)
    for name in [target, *columns]:
        if name not in header:
            raise DataError(
                f"dataset: column {name!r} is not in {path} (columns: {', '.join(header)})"
            )
    x = float_columns(train_rows, columns, path)
    raw_y = [row[target] for row in train_rows]
    classes = sorted(set(raw_y)) if task == "classification" else None
    encode = (lambda v: classes.index(v)) if classes else float  # type: ignore[union-attr]
    y = _encode(raw_y, encode, path, target)
    names = {"classes": classes, "features": columns}  # kept in run.json for predict
    if test_path is None:
        return _hold_out(x, y, test_fraction, test_split_seed) | names
    test_rows, _ = read_csv(Path(test_path), "dataset.test_path")
    return {
        "x_train": x,
        "y_train": y,
        "x_test": float_columns(test_rows, columns, test_path),
        "y_test": _encode([row[target] for row in test_rows], encode, test_path, target),
    } | names


def image_folder(
    train_dir: str,
    test_dir: str | None,
    test_fraction: float,
    test_split_seed: int,
    transforms: list[Any],
    train_transforms: list[Any],
) -> DatasetSplits:
    """Class-per-folder images (<dir>/<class>/<image>): `transforms` for every split, with
    `train_transforms` (augmentation) applied before them when training."""
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import Compose

    def folder(path: str, key: str, steps: list[Any]) -> ImageFolder:
        try:
            return ImageFolder(path, transform=Compose(steps), loader=load_image)
        except (FileNotFoundError, OSError) as e:
            raise DataError(
                f"dataset.{key}={path}: {first_line(e)} (expected {path}/<class>/<image>.png)"
            ) from None

    train = folder(train_dir, "train_dir", [*train_transforms, *transforms])
    train_eval = folder(train_dir, "train_dir", transforms)
    if test_dir is not None:
        test = folder(test_dir, "test_dir", transforms)
        if test.classes != train.classes:
            raise DataError(
                f"dataset.test_dir={test_dir}: its class folders {test.classes} differ from "
                f"dataset.train_dir's {train.classes}"
            )
        return DatasetSplits(train, train_eval, test, classes=train.classes)
    rest, held = _hold_out_indices(len(train), test_fraction, test_split_seed)
    return DatasetSplits(
        Subset(train, rest), Subset(train_eval, rest), Subset(train_eval, held), train.classes
    )


def load_image(path: str | Path) -> Any:
    """One image file as RGB; a file PIL cannot read is a DataError naming it (in a DataLoader
    worker too: the run reports the file, not a traceback)."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise DataError(
            f"{path}: not a readable image ({first_line(e)}); fix or remove the file"
        ) from None


# ---- helpers ----


def _hold_out_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * fraction)
    if not 0 < n_test < n:
        raise DataError(
            f"dataset.test_fraction={fraction}: must leave samples on both sides of {n}"
        )
    return sorted(order[n_test:].tolist()), sorted(order[:n_test].tolist())


def _hold_out(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> Arrays:
    """Split a dataset that has no test split of its own, with a seed of its own."""
    rest, held = _hold_out_indices(len(y), fraction, seed)
    return {"x_train": x[rest], "y_train": y[rest], "x_test": x[held], "y_test": y[held]}


def read_csv(path: Path, key: str) -> tuple[list[dict[str, str]], list[str]]:
    if not path.is_file():
        raise DataError(f"{key}={path}: no such file")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return rows, list(reader.fieldnames or [])


FLOAT32_MAX = float(np.finfo(np.float32).max)


def float_columns(rows: list[dict[str, str]], columns: list[str], path: str) -> np.ndarray:
    out = np.empty((len(rows), len(columns)), dtype=np.float32)
    for i, row in enumerate(rows):
        for j, name in enumerate(columns):
            try:
                value = float(row[name])
            except (TypeError, ValueError):
                raise DataError(
                    f"{path}: row {i + 2}, column {name!r} is {row[name]!r}, not a number; "
                    "list the numeric columns in dataset.features"
                ) from None
            if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                # float() takes "nan" and "inf"; one such cell makes every loss NaN, or
                # (validation) pins best.pt at an epoch it never earned.
                raise DataError(
                    f"{path}: row {i + 2}, column {name!r} is {row[name]!r}"
                    f"{' (too large for float32)' if math.isfinite(value) else ''}: inputs must "
                    "be finite numbers; fix or drop that row"
                )
            out[i, j] = value
    return out


def _encode(values: list[str], encode: Any, path: str, target: str) -> np.ndarray:
    """Class indices (N,), or float targets as a column (N, 1), like every regression target."""
    try:
        encoded = np.asarray([encode(v) for v in values])
    except ValueError:
        raise DataError(
            f"{path}: a value of the target column {target!r} is not in the train file's "
            "classes, or not a number for a regression target"
        ) from None
    if encode is not float:
        return encoded
    targets = encoded.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(targets))
    if bad.size:
        raise DataError(
            f"{path}: row {bad[0] + 2}, column {target!r} is {values[bad[0]]!r}: targets must "
            "be finite numbers; fix or drop that row"
        )
    return targets[:, None]
