"""What a run trains and where it stands: Parts (model, loss, optimizer, scheduler, task,
batches, precision), built once, in order, from the run's config; LoopState, the loop's own
record. checkpoint.py saves and restores both; train.py and evaluation.py build from here."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from trainlab import distributed, steps
from trainlab.build import build_loss, build_model, build_optimizer, build_scheduler
from trainlab.config import Interval, TrainerConfig, monitor_mode
from trainlab.contrastive import TwoViews
from trainlab.data import Data, LoaderBatches, Shard, Split, TensorBatches, make_batches
from trainlab.errors import ConfigError
from trainlab.reconstruction import Corruption, SampleSeeds
from trainlab.tasks import Task, task_of

Batches = TensorBatches | LoaderBatches
# The names a checkpoint keeps for its own entries (checkpoint.snapshot); a step's extra state
# takes other names.
STATEFUL_NAMES = ("model", "optimizer", "scheduler", "grad_scaler", "loop", "rng", "config",
                  "environment", "ranks", "schema_version")  # fmt: skip


@dataclass
class Precision:
    """trainer.precision: the autocast dtype (None: fp32) and, for fp16, the grad scaler."""

    device_type: str
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


@dataclass
class Parts:
    """What a run trains, built in order by build_parts."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler | None
    scheduler_interval: Interval
    task: Task
    train: Batches
    val: Batches
    precision: Precision
    eval_with_average: bool = False  # ASGD: validate, test and keep best.pt with `ax`
    # Check the loss before every optimizer step (one scalar read, free on the CPU, a device
    # sync on a GPU); otherwise at log points and before every save, so a NaN is never saved.
    check_every_step: bool = True
    # The step function and the state it declared (steps.py: the step contract): saved and
    # restored by name beside the model's; more_schedulers are stepped beside `scheduler`.
    step: steps.Step = steps.SUPERVISED
    extra: dict[str, Any] = field(default_factory=dict)
    more_schedulers: list[tuple[LRScheduler, Interval]] = field(default_factory=list)

    def schedulers(self) -> list[tuple[LRScheduler, Interval]]:
        main = [(self.scheduler, self.scheduler_interval)] if self.scheduler is not None else []
        return main + self.more_schedulers

    def optimizers(self) -> dict[str, Optimizer]:
        """Every optimizer by its config key: `optimizer`, and any a step declared."""
        declared = {k: v for k, v in self.extra.items() if isinstance(v, Optimizer)}
        return {"optimizer": self.optimizer} | declared

    def run_length(self, trainer: TrainerConfig, interval: Interval) -> int:
        """How many times a scheduler with this interval steps in the whole run."""
        per_epoch = math.ceil(len(self.train) / trainer.batches_per_step())
        steps_ = trainer.max_steps or trainer.max_epochs * per_epoch
        return steps_ if interval == Interval.step else math.ceil(steps_ / per_epoch)


@dataclass
class LoopState:
    """The loop's own state: saved in every checkpoint, restored on resume."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of the current epoch already trained
    best: float | None = None  # best value of trainer.monitor so far
    best_step: int | None = None
    bad_validations: int = 0  # validations in a row without improvement (early stopping)
    stopped_early: bool = False
    nan_skips: int = 0  # steps skipped for a non-finite loss (trainer.nan_policy=skip)
    train_s: float = 0.0  # seconds spent in fit, over every attempt
    wall_s: float = 0.0  # seconds of every attempt, from its start (up to its last checkpoint)
    checkpoint_s: float = 0.0  # of which writing checkpoints
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch
    # Saved mid-epoch only: the epoch's and the log interval's running sums (tasks.state), so a
    # resumed epoch reports exactly what the uninterrupted one would have.
    partial_sums: dict[str, dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Plain values; the history packed into one tensor (see pack_history)."""
        # A shallow dict: torch.save serialises it at once, nothing needs a copy.
        loop = {f.name: getattr(self, f.name) for f in fields(self)}
        return loop | {"history": pack_history(self.history)}

    @classmethod
    def from_state_dict(cls, saved: dict[str, Any]) -> LoopState:
        # Keys a newer trainlab no longer keeps (best_epoch) are dropped, not refused.
        known = {k: v for k, v in saved.items() if k in cls.__dataclass_fields__}
        return cls(**known | {"history": unpack_history(saved["history"])})

    def best_epoch(self) -> int | None:
        return next((r["epoch"] for r in self.history if r["step"] == self.best_step), None)


def pack_history(history: list[dict[str, float]]) -> dict[str, Any]:
    """The per-epoch records as one float64 tensor (NaN where a record lacks a key) and the
    column names: a few objects to pickle instead of thousands, at every save. Exact: every
    value is a float or an int below 2**53."""
    columns = list(dict.fromkeys(key for record in history for key in record))
    values = [[float(r.get(c, math.nan)) for c in columns] for r in history]
    tensor = torch.tensor(values, dtype=torch.float64).reshape(len(history), len(columns))
    return {"columns": columns, "values": tensor}


def unpack_history(packed: dict[str, Any]) -> list[dict[str, float]]:
    records = []
    for row in packed["values"].tolist():
        record = {c: v for c, v in zip(packed["columns"], row, strict=True) if not math.isnan(v)}
        for key in ("epoch", "step"):
            if key in record:
                record[key] = int(record[key])
        records.append(record)
    return records


@contextmanager
def eval_weights(parts: Parts) -> Iterator[None]:
    """The weights that are validated, tested and kept as best.pt: with
    optimizer.eval_with_average (ASGD) the averaged weights `ax`, swapped in for the duration;
    the raw weights come back afterwards and training continues from them."""
    if not parts.eval_with_average:
        yield
        return
    params = [p for g in parts.optimizer.param_groups for p in g["params"]]
    raw = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            state = parts.optimizer.state.get(p, {})
            if "ax" in state:
                p.copy_(state["ax"])
    try:
        yield
    finally:
        with torch.no_grad():
            for p, r in zip(params, raw, strict=True):
                p.copy_(r)


# ---- building them ----


def setup_torch(trainer: TrainerConfig) -> None:
    if trainer.num_threads is not None:
        torch.set_num_threads(trainer.num_threads)
    if trainer.deterministic:
        # cuBLAS needs this before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not trainer.deterministic
    # TF32 matmuls and convolutions on GPUs that have them (Ampere and later).
    torch.backends.cuda.matmul.allow_tf32 = trainer.tf32
    torch.backends.cudnn.allow_tf32 = trainer.tf32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def build_parts(
    cfg: DictConfig, trainer: TrainerConfig, data: Data, device: torch.device,
    world: distributed.World,
) -> Parts:  # fmt: skip
    """Everything the loop trains, from the run's config and `trainer` (its converted node)."""
    seed_everything(cfg.seed)  # the model's initial weights come from the run seed
    model = build_model(cfg.model).to(device, memory_format=memory_format(trainer))
    loss_fn = build_loss(cfg.loss).to(device)
    # task=adversarial: `optimizer` trains the discriminator (the generator's is the step's).
    trained = model.discriminator if cfg.task == "adversarial" else model
    per_sample = getattr(model, "takes_sample_seeds", False)
    optimizer = build_optimizer(cfg.optimizer, trained)  # after .to(device): it holds the params
    if trainer.compile:
        model = torch.compile(model)  # same parameters; checkpoints save the unwrapped module
    overfit = trainer.overfit_batches is not None
    train = batches(data.train, "train", trainer, cfg.seed, data, world)
    if per_sample:  # a model that draws per training sample (a masked autoencoder's masks)
        train.transform = SampleSeeds(cfg.seed, train.transform)
    # overfit_batches: validate on the very batches it trains on, to watch them be learnt.
    val = batches(data.train if overfit else data.val, "val", trainer, cfg.seed, data, world)
    interval = Interval(cfg.scheduler.interval)
    parts = Parts(
        model, loss_fn, optimizer, None, interval,
        task=task_of(cfg.dataset, data.held_targets(), cfg.task, trainer.knn_k),
        train=train,
        val=val,
        precision=precision_of(trainer.precision, device),
        # A key only an averaging optimizer (asgd) has.
        eval_with_average="eval_with_average" in cfg.optimizer and cfg.optimizer.eval_with_average,
        # A per-step check is free on the CPU; on a GPU it is a sync per step, so it is only
        # made when skipping a bad step needs it (see Parts).
        check_every_step=device.type == "cpu" or trainer.nan_policy == "skip",
        step=steps.resolve(cfg),
    )  # fmt: skip
    total = parts.run_length(trainer, interval)
    parts.scheduler = build_scheduler(cfg.scheduler, optimizer, total, monitor_mode(trainer))
    if parts.step.extra_state is not None:
        parts.extra = parts.step.extra_state(cfg, trainer, parts)
        clash = set(parts.extra) & set(STATEFUL_NAMES)
        if clash:
            raise ConfigError(
                f"trainer.step={cfg.trainer.step}: its extra state may not be named "
                f"{', '.join(sorted(clash))}: a checkpoint keeps those names for its own parts"
            )
    return parts


def batches(
    split: Split | Any, which: str, trainer: TrainerConfig, seed: int, data: Data,
    world: distributed.World,
) -> Batches:  # fmt: skip
    """The batches of one split (`which`: train, val or test) as the trainer config says:
    shuffled per epoch for training unless overfit_batches, this rank's share under DDP, cut
    to trainer.limit_<which>_batches (or overfit_batches, or fast_dev_run's one)."""
    training = which == "train"
    shard = Shard(world.rank, world.size, split_batches=training)
    shuffle = training and trainer.overfit_batches is None
    made = make_batches(split, trainer.batch_size, shuffle, seed, data.device, data.num_workers,
                        memory_format(trainer), shard)  # fmt: skip
    made.limit = batch_limit(trainer, which, made.full_length())
    # Per-sample seeded transforms, in-memory splits only (data.py refuses the others).
    corruption = Corruption.from_config(data.corruption, seed)
    if corruption is not None:
        made.transform = corruption.for_split(which)
    if data.views is not None and which == "train":  # evaluation embeds the samples as they are
        made.transform = TwoViews.from_config(data.views, seed)
    return made


def batch_limit(trainer: TrainerConfig, which: str, n: int) -> int | None:
    """How many of a split's n batches an epoch uses; None: all. A fraction takes at least one."""
    if trainer.fast_dev_run:
        return 1
    if which == "test":  # the test split is always whole, but under fast_dev_run
        return None
    limit = trainer.overfit_batches
    if limit is None:
        limit = getattr(trainer, f"limit_{which}_batches")
    if limit is None:
        return None
    return limit if isinstance(limit, int) else max(1, int(limit * n))


def memory_format(trainer: TrainerConfig) -> torch.memory_format:
    return torch.channels_last if trainer.channels_last else torch.contiguous_format


def precision_of(name: str, device: torch.device) -> Precision:
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(device.type, dtype, scaler)
