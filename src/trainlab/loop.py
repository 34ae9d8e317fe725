"""The training loop: train_step, evaluate, fit. fit reads top to bottom: for each epoch, for
each batch, step, maybe log; then validate, maybe stop early, checkpoint."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.tensorboard import SummaryWriter

from trainlab import checkpoint, metrics
from trainlab.data import TensorBatches
from trainlab.errors import Diverged

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """What a run trains, built in order by train.py."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler | None
    scheduler_interval: str  # "epoch" | "step"
    train: TensorBatches
    val: TensorBatches


@dataclass
class LoopState:
    """The loop's own state: saved in every checkpoint, restored on resume."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of the current epoch already trained
    best: float | None = None  # best value of trainer.monitor so far
    best_epoch: int | None = None
    best_step: int | None = None
    bad_validations: int = 0  # validations in a row without improvement (early stopping)
    stopped_early: bool = False
    train_s: float = 0.0  # seconds spent in fit, over every attempt
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch


@dataclass
class Checkpointing:
    """Where and with what fixed context fit writes checkpoints."""

    directory: Path
    config: dict[str, Any]
    environment: dict[str, Any]


def train_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: nn.Module,
    optimizer: Optimizer,
    grad_clip_norm: float | None,
) -> tuple[Tensor, Tensor]:
    """Forward, backward, clip, step. Returns the detached loss and output (no device sync)."""
    optimizer.zero_grad(set_to_none=True)
    output = model(x)
    loss = loss_fn(output, y)
    loss.backward()
    if grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    optimizer.step()
    return loss.detach(), output.detach()


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: TensorBatches, loss_fn: nn.Module, prefix: str
) -> dict[str, float]:
    """Mean loss and accuracy over `batches`, as {prefix/loss, prefix/acc}; leaves the model's
    train/eval mode as it found it."""
    was_training = model.training
    model.eval()
    sums = new_sums(batches.split.x.device)
    for x, y in batches.epoch(0):
        output = model(x)
        accumulate(sums, loss_fn(output, y), output, y)
    model.train(was_training)
    return summarize(sums, prefix)


def new_sums(device: torch.device) -> dict[str, Tensor]:
    zero = torch.zeros((), dtype=torch.float64, device=device)
    return {"loss": zero.clone(), "correct": zero.clone(), "count": zero.clone()}


def accumulate(sums: dict[str, Tensor], loss: Tensor, output: Tensor, y: Tensor) -> None:
    """Add one batch on the device: the loss weighted by batch size, and the correct count."""
    n = y.shape[0]
    sums["loss"] += loss.detach() * n
    sums["correct"] += (output.argmax(-1) == y).sum()
    sums["count"] += n


def summarize(sums: dict[str, Tensor], prefix: str) -> dict[str, float]:
    """Means of the sums: the only place the loop waits for the device."""
    count = sums["count"].item()
    if count == 0:
        return {}
    return {
        f"{prefix}/loss": sums["loss"].item() / count,
        f"{prefix}/acc": sums["correct"].item() / count,
    }


def fit(
    trainer: DictConfig,
    parts: Parts,
    state: LoopState,
    writer: SummaryWriter,
    ckpt: Checkpointing,
) -> LoopState:
    """Train until trainer.max_epochs (or max_steps) or early stopping; return the final state."""
    model, optimizer, scheduler = parts.model, parts.optimizer, parts.scheduler
    device = parts.train.split.x.device
    max_epochs = None if trainer.max_steps is not None else trainer.max_epochs
    model.train()
    while not _finished(trainer, state):
        start_time = time.perf_counter()
        epoch_sums, interval_sums = new_sums(device), new_sums(device)
        for x, y in parts.train.epoch(state.epoch, start=state.batch_in_epoch):
            loss, output = train_step(model, x, y, parts.loss_fn, optimizer, trainer.grad_clip_norm)
            accumulate(epoch_sums, loss, output, y)
            accumulate(interval_sums, loss, output, y)
            state.step += 1
            state.batch_in_epoch += 1
            if scheduler is not None and parts.scheduler_interval == "step":
                scheduler.step()
            if state.step % trainer.log_every_n_steps == 0:
                _log_train(writer, interval_sums, optimizer, state.step)
                interval_sums = new_sums(device)
            if trainer.max_steps is not None and state.step >= trainer.max_steps:
                break
        _log_train(writer, interval_sums, optimizer, state.step)
        if state.batch_in_epoch == len(parts.train):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        finished = _finished(trainer, state)

        seconds = time.perf_counter() - start_time
        record: dict[str, Any] = {"epoch": state.epoch, "step": state.step}
        record.update(summarize(epoch_sums, "train"))
        record["time/epoch_s"] = seconds
        record["time/samples_per_s"] = epoch_sums["count"].item() / max(seconds, 1e-9)
        if finished or state.epoch % trainer.val_every_epochs == 0:
            record.update(evaluate(model, parts.val, parts.loss_fn, "val"))
        improved = _track_best(trainer, state, record)
        if scheduler is not None and parts.scheduler_interval == "epoch":
            scheduler.step()
        state.history.append(record)
        state.train_s += time.perf_counter() - start_time
        # train/* went out with the last interval above; the epoch adds val/* and time/*.
        metrics.log_scalars(
            writer, {k: v for k, v in record.items() if k.startswith(("val/", "time/"))}, state.step
        )
        log.info(metrics.format_epoch(state.epoch, max_epochs, record))

        patience = trainer.early_stopping.patience
        if patience is not None and state.bad_validations >= patience:
            state.stopped_early = True
            log.info(
                f"early stopping: {trainer.monitor} has not improved for {patience} validations"
            )
        finished = finished or state.stopped_early
        names = (
            ["last.pt"] if finished or state.epoch % trainer.checkpoint.every_n_epochs == 0 else []
        )
        names += ["best.pt"] if improved else []
        if names:
            _save(ckpt, names, parts, state, record.get(trainer.monitor))
    return state


def _finished(trainer: DictConfig, state: LoopState) -> bool:
    if state.stopped_early:
        return True
    if trainer.max_steps is not None:
        return state.step >= trainer.max_steps
    return state.epoch >= trainer.max_epochs


def _log_train(
    writer: SummaryWriter, sums: dict[str, Tensor], optimizer: Optimizer, step: int
) -> None:
    """The train/* means since the last point, and each group's lr; stops a diverged run."""
    scalars = summarize(sums, "train")
    if not scalars:
        return
    if not math.isfinite(scalars["train/loss"]):
        raise Diverged(
            f"train/loss is {scalars['train/loss']} at step {step}: lower optimizer.lr, or set "
            "trainer.grad_clip_norm"
        )
    metrics.log_scalars(writer, scalars | metrics.lr_scalars(optimizer), step)


def _track_best(trainer: DictConfig, state: LoopState, record: dict[str, Any]) -> bool:
    """Update best/bad_validations from this epoch's record; True if the monitor improved."""
    value = record.get(trainer.monitor)
    if value is None:
        return False
    delta = trainer.early_stopping.min_delta
    if trainer.mode == "min":
        improved = state.best is None or value < state.best - delta
    else:
        improved = state.best is None or value > state.best + delta
    if improved:
        state.best, state.best_epoch, state.best_step = value, state.epoch, state.step
        state.bad_validations = 0
    else:
        state.bad_validations += 1
    return improved


def _save(
    ckpt: Checkpointing, names: list[str], parts: Parts, state: LoopState, metric: float | None
) -> None:
    loop_state = asdict(state)
    snapshot = checkpoint.state_dict(
        parts.model, parts.optimizer, parts.scheduler, loop_state, ckpt.config, ckpt.environment
    )
    info = {"epoch": state.epoch, "step": state.step, "metric": metric}
    checkpoint.save(ckpt.directory, names, snapshot, info)
