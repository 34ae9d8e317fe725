"""Small data files in the formats trainlab reads (MNIST idx, CIFAR python batches, CSV,
class-per-folder images), written by the tests themselves: nothing is downloaded."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def write_mnist(raw: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """The four idx files torchvision's MNIST/FashionMNIST read from <root>/<variant>/raw."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        # Each class gets its own bright column, so a model can learn something.
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        images[np.arange(n), :, labels.astype(int) * 2 + 4] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes()
        )


def write_cifar(folder: Path, per_batch: int, seed: int = 0) -> None:
    """data_batch_1..5 and test_batch as CIFAR-10's python pickles (dicts of numpy arrays)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def write_csv(
    path: Path,
    rows: int,
    seed: int = 0,
    features: tuple[str, ...] = ("f1", "f2", "f3", "f4"),
    target: str = "label",
    score: bool = True,
) -> None:
    """An iris-like table: four numeric features, a string class label (and a float target)."""
    rng = np.random.default_rng(seed)
    names = ["setosa", "versicolor", "virginica"]
    lines = [",".join([*features, target, *(["score"] if score else [])])]
    for i in range(rows):
        c = i % 3
        x = rng.normal(loc=c, scale=0.3, size=len(features))
        extra = f",{x.sum():.4f}" if score else ""
        lines.append(",".join(f"{v:.4f}" for v in x) + f",{names[c]}{extra}")
    path.write_text("\n".join(lines) + "\n")


def write_images(root: Path, classes: tuple[str, ...], per_class: int, seed: int = 0) -> None:
    """<root>/<class>/<i>.png, 12x12 RGB, each class a different tint."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, size=(12, 12, 3), dtype=np.uint8)
            pixels[..., c % 3] += 150
            Image.fromarray(pixels).save(folder / f"{i}.png")
