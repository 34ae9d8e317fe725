"""Datasets, the seeded train/validation split, and in-memory batching.

A dataset loader (the `_target_` of conf/dataset/*.yaml) returns numpy arrays
{x_train, y_train, x_test, y_test}. build_data splits off validation with its own seed and
holds every split as tensors on the training device; TensorBatches then draws each epoch's
order from a generator seeded by (seed, epoch), so any position in any epoch can be
re-created without replaying the run (exact resume, shardable across ranks).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from trainlab.build import instantiate_node
from trainlab.errors import DataError
from trainlab.rundir import write_atomic

log = logging.getLogger(__name__)

# Keys of a dataset node that describe the data to trainlab and are not loader arguments.
TRAINLAB_KEYS = ("task", "input_shape", "num_features", "num_classes", "val_fraction", "split_seed")


@dataclass
class Split:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Data:
    train: Split
    val: Split
    test: Split


def build_data(cfg: DictConfig, device: torch.device) -> Data:
    """Load the dataset named by cfg, split off validation, check it against cfg, move to device."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    for key in TRAINLAB_KEYS:
        kwargs.pop(key)
    arrays = instantiate_node(kwargs, "dataset")
    train = _as_split(arrays["x_train"], arrays["y_train"])
    test = _as_split(arrays["x_test"], arrays["y_test"])
    for name, split in (("train", train), ("test", test)):
        _check_split(cfg, name, split)
    train, val = split_validation(train, cfg.val_fraction, cfg.split_seed)
    return Data(train=train.to(device), val=val.to(device), test=test.to(device))


def split_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out round(fraction * n) samples for validation, chosen by a generator of its own."""
    n = len(train)
    n_val = round(n * fraction)
    if not 0 < n_val < n:
        raise DataError(
            f"dataset.val_fraction={fraction}: leaves {n_val} of {n} train samples for "
            "validation; pick a fraction that keeps at least one sample on each side"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return Split(train.x[train_idx], train.y[train_idx]), Split(train.x[val_idx], train.y[val_idx])


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for (run seed, epoch): epoch orders independent of each other."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


class TensorBatches:
    """Batches of an in-memory split by indexing a permutation: no per-sample collation."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int) -> None:
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def order(self, epoch: int) -> Tensor:
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(
            n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        )

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of `epoch`, from batch index `start` on (a resumed run starts mid-way)."""
        order = self.order(epoch).to(self.split.x.device)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.split.x[idx], self.split.y[idx]


# ---- loaders: the `_target_`s of conf/dataset ----


def mnist1d(
    root: str,
    num_samples: int,
    train_split: float,
    final_seq_length: int,
    shuffle_seq: bool,
    seed: int,
) -> dict[str, np.ndarray]:
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


def digits(test_fraction: float, test_split_seed: int) -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as (1, 8, 8) images in [0, 1]; a fixed test hold-out."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(test_split_seed).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    if not 0 < n_test < len(y):
        raise DataError(f"dataset.test_fraction={test_fraction}: must leave samples on both sides")
    test, train = order[:n_test], order[n_test:]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


# ---- helpers ----


def _as_split(x: np.ndarray, y: np.ndarray) -> Split:
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y))
    if not yt.is_floating_point():
        yt = yt.long()
    return Split(xt, yt)


def _check_split(cfg: DictConfig, name: str, split: Split) -> None:
    if len(split) == 0:
        raise DataError(f"dataset={cfg._target_}: the {name} split is empty")
    shape = list(split.x.shape[1:])
    if shape != list(cfg.input_shape):
        raise DataError(
            f"dataset.input_shape={list(cfg.input_shape)}: the {name} samples have shape {shape}; "
            f"set dataset.input_shape={shape}"
        )
    if math.prod(shape) != cfg.num_features:
        raise DataError(
            f"dataset.num_features={cfg.num_features}: samples of shape {shape} have "
            f"{math.prod(shape)} elements; set dataset.num_features={math.prod(shape)}"
        )
    if cfg.task == "classification":
        low, high = int(split.y.min()), int(split.y.max())
        if low < 0 or high >= cfg.num_classes:
            raise DataError(
                f"dataset.num_classes={cfg.num_classes}: the {name} labels run from {low} to "
                f"{high}; set dataset.num_classes={high + 1}"
            )


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
