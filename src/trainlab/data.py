"""Splits and batches: the seeded train/validation split, checks of the data against what the
dataset config declares, and the two ways batches are made.

A dataset loader (the `_target_` of conf/dataset/*.yaml, in datasets.py) returns either numpy
arrays {x_train, y_train, x_test, y_test}, held as tensors on the training device and batched
by indexing a permutation (TensorBatches), or torch Datasets (DatasetSplits) for data that does
not fit in memory, batched by a DataLoader (LoaderBatches). Both draw each epoch's order from a
generator seeded by (seed, epoch), so any position in any epoch can be re-created without
replaying the run (exact resume, shardable across ranks).
"""

from __future__ import annotations

import inspect
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from trainlab import dataspec, lock
from trainlab.build import instantiate_node
from trainlab.errors import ConfigError, DataError
from trainlab.seeds import epoch_order, epoch_seed, validation_indices
from trainlab.signals import HANDLED
from trainlab.tasks import Target

# Keys of a dataset node that describe the data to trainlab and are not loader arguments.
TRAINLAB_KEYS = (
    "task", "input_shape", "num_features", "num_outputs", "num_classes", "negative_label",
    "heads", "monitor", "val_fraction", "split_seed", "num_workers", "standardize", "corruption",
    "views",
)  # fmt: skip


@dataclass
class Split:
    """One split held in memory: inputs and targets (a tensor, or a dict of them per head)."""

    x: Tensor
    y: Target

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, idx: Tensor) -> Split:
        return Split(self.x[idx], _tree(lambda t: t[idx], self.y))

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), _tree(lambda t: t.to(device), self.y))


@dataclass
class DatasetSplits:
    """What a DataLoader-path loader returns: `train` with training transforms, and the same
    samples with evaluation transforms (`train_eval`, for the validation split), plus `test`."""

    train: Dataset
    train_eval: Dataset
    test: Dataset
    classes: list[str] | None = None


@dataclass
class Data:
    train: Split | Dataset
    val: Split | Dataset
    test: Split | Dataset
    device: torch.device  # where in-memory splits are held and batches are delivered
    num_workers: int = 0  # DataLoader workers (dataset.num_workers): Datasets only
    # The names of the class labels 0, 1, ... where the data has them (a CSV's target values,
    # an image folder's class folders); stored in run.json so predict never re-reads the data.
    classes: list[str] | None = None
    features: list[str] | None = None  # the input columns' names (a CSV table)
    standardize: dict[str, list[float]] | None = None  # dataset.standardize's statistics
    corruption: DictConfig | None = None  # dataset.corruption (reconstruction.Corruption)
    views: DictConfig | None = None  # dataset.views (contrastive.TwoViews)

    def held_targets(self) -> list[Target]:
        """The targets of the splits held in memory (a Dataset's are read only by batching)."""
        return [s.y for s in (self.train, self.val, self.test) if isinstance(s, Split)]


def build_data(
    cfg: DictConfig, device: torch.device, stats: dict[str, list[float]] | None = None,
    task: str = "supervised",
) -> Data:  # fmt: skip
    """Load the dataset named by cfg, fill its null shape keys from the data and check the
    rest against it, split off validation, standardize (with `stats`, the run's stored
    statistics, or the train split's own), move to device. task=reconstruction: every split's
    targets are its (clean, standardized) inputs."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    takes = inspect.signature(get_method(cfg._target_)).parameters
    for key in TRAINLAB_KEYS:
        if key not in takes:  # e.g. a synthetic generator takes num_features itself
            kwargs.pop(key, None)
    loaded = instantiate_node(kwargs, "dataset")
    if isinstance(loaded, DatasetSplits):
        return _dataset_splits(cfg, loaded, device, task)
    train = _as_split(loaded["x_train"], loaded["y_train"])
    test = _as_split(loaded["x_test"], loaded["y_test"])
    dataspec.fill_from_data(cfg, list(train.x.shape[1:]), loaded.get("classes"), train.y)
    dataspec.check_classes(cfg, loaded.get("classes"))
    for name, split in (("train", train), ("test", test)):
        dataspec.check_split(cfg, name, split.x, split.y)
    train_idx, val_idx = validation_indices(len(train), cfg.val_fraction, cfg.split_seed)
    train, val = train.take(train_idx), train.take(val_idx)
    if cfg.get("standardize"):
        stats = stats or dataspec.feature_stats(train.x)
        train, val, test = (
            Split(dataspec.standardized(s.x, stats, "dataset"), s.y) for s in (train, val, test)
        )
    if task == "reconstruction":
        train, val, test = (Split(s.x, s.x) for s in (train, val, test))
    return Data(
        train=train.to(device), val=val.to(device), test=test.to(device), device=device,
        classes=loaded.get("classes"), features=loaded.get("features"),
        standardize=stats if cfg.get("standardize") else None,
        corruption=cfg.get("corruption"),
        views=cfg.get("views"),
    )  # fmt: skip


@dataclass(frozen=True)
class Shard:
    """This rank's part of the batches under DDP. Training (`split_batches`) gives each rank an
    equal slice of every global batch, so the ranks together step through the same global
    order as one process; an epoch's last, short batch is trimmed to a multiple of the world
    size (at most size-1 samples left out, different ones each epoch) and dropped if shorter
    than that. Evaluation hands whole batches out in turn (rank r: r, r+size, ...) and keeps
    every sample; its sums are added up over the ranks."""

    rank: int = 0
    size: int = 1
    split_batches: bool = True

    def count(self, n: int, batch_size: int) -> int:
        """Global batches (training: optimizer micro-steps) per epoch."""
        full, tail = divmod(n, batch_size)
        keep_tail = tail > 0 and (not self.split_batches or tail >= self.size)
        return full + keep_tail

    def describe(self, n: int, batch_size: int) -> str:
        """What a user reads about the sharding of n training samples."""
        line = (
            f"DDP: {self.size} processes; trainer.batch_size={batch_size} is the global batch, "
            f"{batch_size // self.size} samples per process"
        )
        tail = n % batch_size
        if tail % self.size:
            kept = tail - tail % self.size
            cut = f"trimmed to {kept}" if kept else "dropped"
            line += (
                f"; each epoch's last batch ({tail} samples) is {cut}, a multiple of {self.size}"
            )
        return line

    def batches(
        self, order: Tensor, batch_size: int, start: int, stop: int | None = None
    ) -> Iterator[Tensor]:
        """The index tensors of this rank's batches, from global batch `start` to `stop` (None:
        the epoch's end)."""
        stop = self.count(len(order), batch_size) if stop is None else stop
        for i in range(start, stop):
            batch = order[i * batch_size : (i + 1) * batch_size]
            if self.size == 1:
                yield batch
            elif self.split_batches:
                per = len(batch) // self.size
                yield batch[self.rank * per : (self.rank + 1) * per]
            elif i % self.size == self.rank:
                yield batch


class TensorBatches:
    """Batches of an in-memory split by indexing a permutation: no per-sample collation."""

    def __init__(
        self, split: Split, batch_size: int, shuffle: bool, seed: int, shard: Shard = Shard(),
        transform: Any = None,
    ) -> None:  # fmt: skip
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.device, self.shard = split.x.device, shard
        self.limit: int | None = None  # batches an epoch uses (trainer.limit_*_batches)
        # (x, sample indices, epoch) -> x transformed per sample, seeded by (epoch, index): a
        # reconstruction's corruption, a contrastive run's two views
        self.transform = transform

    def full_length(self) -> int:
        return self.shard.count(len(self.split), self.batch_size)

    def __len__(self) -> int:
        return min(self.full_length(), self.limit or self.full_length())

    def order(self, epoch: int) -> Tensor:
        return epoch_order(len(self.split), self.shuffle, self.seed, epoch)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Target]]:
        """The batches of `epoch`, from batch index `start` on (a resumed run starts mid-way)."""
        order = self.order(epoch).to(self.device)
        for idx in self.shard.batches(order, self.batch_size, start, len(self)):
            batch = self.split.take(idx)
            if self.transform is None:
                yield batch.x, batch.y
            else:
                yield self.transform(batch.x, idx, epoch), batch.y

    def sample(self, n: int) -> tuple[Tensor, Target]:
        """The first n samples, in stored order (for the preflight pass)."""
        first = self.split.take(torch.arange(min(n, len(self.split)), device=self.device))
        return first.x, first.y


class SeededSamples(Dataset):
    """Seeds the random transforms of sample i from (seed, epoch, i), so augmentation does not
    depend on workers, order or what ran before: a resumed epoch sees the same crops."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(epoch_seed(self.seed, self.epoch, index))
            return self.dataset[index]


class LoaderBatches:
    """Batches of a torch Dataset through a DataLoader, in the same seeded per-epoch order."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        device: torch.device,
        num_workers: int,
        shard: Shard = Shard(),
    ) -> None:
        self.dataset = SeededSamples(dataset, seed)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.device, self.num_workers, self.shard = device, num_workers, shard
        self.memory_format = torch.contiguous_format
        self.limit: int | None = None  # batches an epoch uses (trainer.limit_*_batches)

    def full_length(self) -> int:
        return self.shard.count(len(self.dataset), self.batch_size)

    def __len__(self) -> int:
        return min(self.full_length(), self.limit or self.full_length())

    def order(self, epoch: int) -> Tensor:
        return epoch_order(len(self.dataset), self.shuffle, self.seed, epoch)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Target]]:
        order = self.order(epoch)
        shard = self.shard.batches(order, self.batch_size, start, len(self))
        batches = [idx.tolist() for idx in shard]
        self.dataset.epoch = epoch  # workers are started per epoch and copy it
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,  # a fresh worker pool per epoch sees the new epoch
            # Each iterator draws a base seed; from its own generator, not the global one, so
            # loading never moves the stream that dropout and the like draw from.
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)),
            worker_init_fn=_default_signals,
        )
        batches_left = iter(loader)
        try:
            for x, y in batches_left:
                x = x.to(self.device, non_blocking=True)
                if x.dim() == 4 and self.memory_format == torch.channels_last:
                    x = x.contiguous(memory_format=self.memory_format)
                yield x, y.to(self.device, non_blocking=True)
        finally:
            del batches_left  # an epoch cut short (a signal, max_steps) stops its workers now

    def sample(self, n: int) -> tuple[Tensor, Target]:
        x, y = default_collate([self.dataset[i] for i in range(min(n, len(self.dataset)))])
        return x.to(self.device), y.to(self.device)


def _default_signals(worker_id: int) -> None:
    """Workers are forked from a process whose stop signals only set a flag (see signals.py);
    a worker must die when its DataLoader terminates it. A forked worker also shares the run
    folder's lock: it lets go of its copy, so the lock dies with the main process (kill -9)
    and not seconds later with the last orphaned worker."""
    for s in HANDLED:
        signal.signal(s, signal.SIG_DFL)
    lock.forget_locks()


def make_batches(
    split: Split | Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
    memory_format: torch.memory_format = torch.contiguous_format,
    shard: Shard = Shard(),
) -> TensorBatches | LoaderBatches:
    """Batches of an in-memory split or a Dataset. channels_last image batches: an in-memory
    split is converted once (indexing keeps the layout), loaded batches one by one."""
    if isinstance(split, Split):
        if memory_format == torch.channels_last and split.x.dim() == 4:
            split = Split(split.x.contiguous(memory_format=memory_format), split.y)
        return TensorBatches(split, batch_size, shuffle, seed, shard)
    loader = LoaderBatches(split, batch_size, shuffle, seed, device, num_workers, shard)
    loader.memory_format = memory_format
    return loader


# ---- the DataLoader path ----


def _dataset_splits(
    cfg: DictConfig, loaded: DatasetSplits, device: torch.device, task: str
) -> Data:
    if task in ("reconstruction", "contrastive") or cfg.get("corruption") is not None:
        raise ConfigError(
            f"task={task}: {cfg._target_} reads its samples through a DataLoader; "
            "reconstruction, contrastive runs and dataset.corruption work on in-memory "
            "datasets (mnist1d, digits, the synthetic ones, mnist, fashion_mnist, cifar10)"
        )
    if cfg.get("standardize"):
        raise ConfigError(
            f"dataset.standardize=true: {cfg._target_} reads samples through its transforms; "
            "normalise there (torchvision.transforms.Normalize) and set standardize: false"
        )
    for name, dataset in (("train", loaded.train), ("test", loaded.test)):
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise DataError(f"dataset={cfg._target_}: the {name} split is empty")
        x, _ = dataset[0]
        if name == "train":
            dataspec.fill_from_data(cfg, list(x.shape), loaded.classes, None)
            dataspec.check_classes(cfg, loaded.classes)
        dataspec.check_shape(cfg, name, list(x.shape), " after the transforms")
    train_idx, val_idx = validation_indices(
        len(loaded.train),
        cfg.val_fraction,
        cfg.split_seed,  # type: ignore[arg-type]
    )
    if "num_workers" not in cfg:
        raise ConfigError(
            f"dataset={cfg._target_}: its data is read through a DataLoader, which needs "
            "dataset.num_workers (worker processes; 0 = load in the training process); add "
            "num_workers: 0 to the dataset's YAML"
        )
    return Data(
        train=Subset(loaded.train, train_idx.tolist()),
        val=Subset(loaded.train_eval, val_idx.tolist()),
        test=loaded.test,
        device=device,
        num_workers=cfg.num_workers,
        classes=loaded.classes,
    )


def _as_split(x: Any, y: Any) -> Split:
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return Split(xt, _tree(_as_target, y))


def _as_target(y: Any) -> Tensor:
    t = torch.as_tensor(np.asarray(y))
    return t.float() if t.is_floating_point() else t.long()


def _tree(fn: Any, y: Any) -> Any:
    return {k: fn(v) for k, v in y.items()} if isinstance(y, dict) else fn(y)
