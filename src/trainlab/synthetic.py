"""Datasets generated in memory and seeded by their own `seed` (never the run's): MNIST-1D,
one synthetic task per kind of target (so every loss has data that fits it), and FakeData.
Each returns numpy arrays {x_train, y_train, x_test, y_test}."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainlab.rundir import write_atomic

log = logging.getLogger(__name__)

Arrays = dict[str, Any]


def mnist1d(
    root: str,
    num_samples: int,
    train_split: float,
    final_seq_length: int,
    shuffle_seq: bool,
    seed: int,
) -> Arrays:
    """MNIST-1D, generated offline with the paper's other arguments and cached as .npz in root."""
    overrides = dict(
        num_samples=num_samples,
        train_split=train_split,
        final_seq_length=final_seq_length,
        shuffle_seq=shuffle_seq,
        seed=seed,
    )
    key = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(root) / "mnist1d" / f"mnist1d-{key}.npz"
    if not path.is_file():
        log.info("generating MNIST-1D into %s (once; later runs read the cache)", path)
        with _global_rng_untouched():
            from mnist1d.data import get_dataset_args, make_dataset

            args = get_dataset_args()
            for name, value in overrides.items():
                setattr(args, name, value)
            d = make_dataset(args)
        _save_npz(path, x_train=d["x"], y_train=d["y"], x_test=d["x_test"], y_test=d["y_test"])
    with np.load(path) as f:
        return {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}


# ---- synthetic tasks: one per kind of target, so every loss has data that fits it ----


def synthetic_regression(
    num_train: int, num_test: int, num_features: int, num_outputs: int, noise: float, seed: int
) -> Arrays:
    """y = x W + noise, x ~ N(0, 1): a linear map with a known least-squares optimum."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(num_features, num_outputs)) / np.sqrt(num_features)
    x = rng.normal(size=(num_train + num_test, num_features))
    y = x @ w + noise * rng.normal(size=(len(x), num_outputs))
    return _first_n(x.astype(np.float32), y.astype(np.float32), num_train)


def synthetic_classification(
    num_train: int,
    num_test: int,
    input_shape: Sequence[int],
    num_classes: int,
    noise: float,
    seed: int,
) -> Arrays:
    """Classes as noisy copies of one random prototype each, in any input shape (vectors or
    images): quick to make at any size, e.g. for benchmarks."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(num_classes, *input_shape)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=num_train + num_test)
    x = prototypes[labels] + noise * rng.normal(size=(len(labels), *input_shape)).astype(np.float32)
    return _first_n(x.astype(np.float32), labels.astype(np.int64), num_train)


def synthetic_binary(
    num_train: int, num_test: int, num_features: int, noise: float, negative_label: float, seed: int
) -> Arrays:
    """Label 1 where a random linear score plus noise is positive, else negative_label."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=num_features)
    x = rng.normal(size=(num_train + num_test, num_features))
    positive = x @ w + noise * rng.normal(size=len(x)) > 0
    y = np.where(positive, 1.0, negative_label)[:, None]
    return _first_n(x.astype(np.float32), y.astype(np.float32), num_train)


def synthetic_soft_labels(
    num_train: int,
    num_test: int,
    num_features: int,
    num_classes: int,
    temperature: float,
    log_target: bool,
    seed: int,
) -> Arrays:
    """Soft targets, as a teacher gives them for distillation: softmax(x W / temperature) of a
    random linear teacher W, per-class probabilities (their logs with log_target)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(num_features, num_classes)) / np.sqrt(num_features)
    x = rng.normal(size=(num_train + num_test, num_features))
    logits = x @ w / temperature
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    y = log_probs if log_target else np.exp(log_probs)
    return _first_n(x.astype(np.float32), y.astype(np.float32), num_train)


def synthetic_multilabel(
    num_train: int,
    num_test: int,
    num_features: int,
    num_labels: int,
    noise: float,
    negative_label: float,
    seed: int,
) -> Arrays:
    """num_labels independent linear labels with different base rates (some rare)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(num_features, num_labels))
    bias = np.linspace(-1.5, 1.0, num_labels)
    x = rng.normal(size=(num_train + num_test, num_features))
    positive = (
        x @ w / np.sqrt(num_features) + bias + noise * rng.normal(size=(len(x), num_labels)) > 0
    )
    y = np.where(positive, 1.0, negative_label)
    return _first_n(x.astype(np.float32), y.astype(np.float32), num_train)


def synthetic_segmentation(
    num_train: int, num_test: int, image_size: int, noise: float, seed: int
) -> Arrays:
    """Noisy images with one square (class 1) and one disc (class 2) at random places; masks
    label each pixel 0 (background), 1 or 2. Inputs (N, 1, H, W), masks (N, H, W)."""
    rng = np.random.default_rng(seed)
    n, s = num_train + num_test, image_size
    rows, cols = np.mgrid[0:s, 0:s]
    masks = np.zeros((n, s, s), dtype=np.int64)
    for i in range(n):
        side = rng.integers(s // 5, s // 3 + 1)
        r, c = rng.integers(0, s - side, size=2)
        masks[i, r : r + side, c : c + side] = 1
        radius = rng.integers(s // 8, s // 5 + 1)
        cr, cc = rng.integers(radius, s - radius, size=2)
        masks[i][(rows - cr) ** 2 + (cols - cc) ** 2 <= radius**2] = 2
    images = (masks > 0).astype(np.float32) + noise * rng.normal(size=masks.shape)
    # The two shapes differ by brightness too, so a small conv net can tell them apart.
    images += 0.5 * (masks == 2)
    return _first_n(images[:, None].astype(np.float32), masks, num_train)


def synthetic_multitask(
    num_train: int, num_test: int, num_features: int, num_classes: int, noise: float, seed: int
) -> Arrays:
    """One input, two targets: `label`, the argmax of a random linear score (classification),
    and `value`, another linear function of the input (regression, one output)."""
    rng = np.random.default_rng(seed)
    w_label = rng.normal(size=(num_features, num_classes))
    w_value = rng.normal(size=(num_features, 1)) / np.sqrt(num_features)
    x = rng.normal(size=(num_train + num_test, num_features)).astype(np.float32)
    label = (x @ w_label).argmax(1).astype(np.int64)
    value = (x @ w_value + noise * rng.normal(size=(len(x), 1))).astype(np.float32)
    return {
        "x_train": x[:num_train],
        "x_test": x[num_train:],
        "y_train": {"label": label[:num_train], "value": value[:num_train]},
        "y_test": {"label": label[num_train:], "value": value[num_train:]},
    }


def fake(
    num_train: int, num_test: int, image_size: Sequence[int], num_classes: int, seed: int
) -> Arrays:
    """torchvision's FakeData (random images, random labels), held in memory: for throughput."""
    from torchvision.datasets import FakeData
    from torchvision.transforms import PILToTensor

    def arrays(size: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        ds = FakeData(size, tuple(image_size), num_classes, PILToTensor(), random_offset=offset)
        images, labels = zip(*(ds[i] for i in range(size)), strict=True)
        return torch.stack(images).float().div(255).numpy(), np.asarray(labels, dtype=np.int64)

    x_train, y_train = arrays(num_train, seed)
    x_test, y_test = arrays(num_test, seed + num_train)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


# ---- helpers ----


def _first_n(x: np.ndarray, y: np.ndarray, n: int) -> Arrays:
    return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:]}


@contextmanager
def _global_rng_untouched() -> Iterator[None]:
    """mnist1d seeds Python's and numpy's global generators; put both back afterwards so a
    cache miss and a cache hit leave the run's random streams identical."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write atomically: concurrent runs never read half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())
