"""The training loop: train_step, evaluate, fit. fit reads top to bottom: for each epoch, for
each optimizer step (one or more batches), step, maybe log; then validate, maybe stop early,
checkpoint."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LRScheduler, ReduceLROnPlateau
from torch.utils.tensorboard import SummaryWriter

import trainlab
from trainlab import checkpoint, distributed, metrics, tasks
from trainlab.checkpoint import CheckpointSaveError
from trainlab.config import TrainerConfig, monitor_mode
from trainlab.data import LoaderBatches, TensorBatches
from trainlab.errors import Diverged
from trainlab.progress import Progress
from trainlab.signals import StopRequest
from trainlab.tasks import Target, Task

log = logging.getLogger(__name__)

Batches = TensorBatches | LoaderBatches


@dataclass
class Parts:
    """What a run trains, built in order by train.py."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler | None
    scheduler_interval: str  # "epoch" | "step"
    task: Task
    train: Batches
    val: Batches
    precision: Precision
    eval_with_average: bool = False  # ASGD: validate, test and keep best.pt with `ax`
    # Check the loss before every optimizer step (one scalar read, free on the CPU, a device
    # sync on a GPU); otherwise at log points and before every save, so a NaN is never saved.
    check_every_step: bool = True


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
    nan_skips: int = 0  # steps skipped for a non-finite loss (trainer.nan_policy=skip)
    train_s: float = 0.0  # seconds spent in fit, over every attempt
    checkpoint_s: float = 0.0  # of which writing checkpoints
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch
    # Saved mid-epoch only: the epoch's and the log interval's running sums, so a resumed
    # epoch reports exactly what the uninterrupted one would have.
    partial_sums: dict[str, dict[str, Tensor]] | None = None


@dataclass
class Checkpointing:
    """Where, when and with what fixed context fit writes checkpoints (trainer.checkpoint)."""

    directory: Path
    config: str  # the resolved config as YAML text
    environment: dict[str, Any]
    policy: checkpoint.Policy
    every_n_epochs: int | None
    every_n_steps: int | None
    on_error: str  # stop | continue: what a failed save does
    # Under DDP every rank takes part in a save (it hands in its random streams and running
    # sums) and rank 0 alone writes.
    main: bool = True
    writer: checkpoint.Writer | None = field(init=False)

    def __post_init__(self) -> None:
        self.writer = checkpoint.Writer(self.directory, self.policy) if self.main else None


class NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        self.value = value


def train_step(
    model: nn.Module,
    batches: list[tuple[Tensor, Target]],
    loss_fn: nn.Module,
    optimizer: Optimizer,
    grad_clip_norm: float | None,
    precision: Precision,
    check_finite: bool = True,
) -> tuple[list[tuple[Tensor, Any]], float | None]:
    """One optimizer step over one or more batches (gradient accumulation): zero the grads,
    forward (under autocast) and backward each batch with its loss scaled by 1/len(batches),
    clip, step. Returns each batch's detached loss and output from the first evaluation, and
    None, or the loss value if it was NaN/Inf: then the optimizer did not step.

    The work is a closure, as LBFGS needs (it re-evaluates the loss several times); for every
    other optimizer it runs once before the step: the usual forward/backward/step. With
    check_finite the first loss is checked before the optimizer touches anything.
    """
    first: list[tuple[Tensor, Any]] = []
    n, scaler = len(batches), precision.scaler
    # DDP: gradients of all but the last accumulated batch stay local (one all-reduce a step).
    no_sync = getattr(model, "no_sync", None) if n > 1 else None

    def forward_backward() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        total: Tensor | None = None
        for i, (x, y) in enumerate(batches):
            with no_sync() if no_sync is not None and i < n - 1 else nullcontext():
                with precision.autocast():
                    output = model(x)
                    loss = loss_fn(output, y)
                scaled = loss / n if n > 1 else loss
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            total = scaled.detach() if total is None else total + scaled.detach()
            if len(first) < n:
                first.append((loss.detach(), _detach(output)))
        return total  # type: ignore[return-value]

    checked = not check_finite

    def closure() -> Tensor:
        nonlocal checked
        total = forward_backward()
        if not checked:
            checked = True
            _check_finite(total)
        if grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        return total

    if scaler is None:
        try:
            if isinstance(optimizer, torch.optim.LBFGS):
                optimizer.step(closure)
            else:  # what step(closure) does for every other optimizer, minus a context switch
                closure()
                optimizer.step()
        except NonFiniteLoss as e:
            optimizer.zero_grad(set_to_none=True)
            return first, e.value
        return first, None
    # fp16: GradScaler cannot drive a closure. It skips a step whose gradients overflowed and
    # lowers its scale: that is not divergence, only a non-finite loss is.
    try:
        total = forward_backward()
        if check_finite:
            _check_finite(total)
    except NonFiniteLoss as e:
        optimizer.zero_grad(set_to_none=True)
        return first, e.value
    if grad_clip_norm is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    scaler.step(optimizer)
    scaler.update()
    return first, None


def _check_finite(total: Tensor) -> None:
    """Raise NonFiniteLoss if the loss is NaN/Inf, on every rank if it is on any: DDP has
    already averaged the gradients, so a bad loss anywhere makes them bad everywhere."""
    value = total.item()  # on a GPU a sync; on the CPU, well under a microsecond
    bad = not math.isfinite(value)
    if distributed.any_rank(bad, total.device):
        raise NonFiniteLoss(value if bad else math.nan)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    loss_fn: nn.Module,
    task: Task,
    split: str,
    precision: Precision | None = None,
    confusion: Tensor | None = None,
) -> dict[str, float]:
    """The task's metrics over `batches` as {split/metric: value}, under the run's autocast;
    leaves the model's train/eval mode as it found it. Classification: a `confusion` tensor
    (num_classes x num_classes, int64, on the batches' device) gets this rank's counts of
    (true class, predicted class) added, negative labels (ignore_index) left out."""
    was_training = model.training
    model.eval()
    sums = tasks.new_sums(task, batches.device)
    for x, y in batches.epoch(0):
        with precision.autocast() if precision is not None else nullcontext():
            output = model(x)
            loss = loss_fn(output, y)
        tasks.accumulate(task, sums, loss, output, y)
        if confusion is not None:
            n, keep = len(confusion), y >= 0
            pairs = y[keep] * n + output.argmax(-1)[keep]
            confusion.view(-1).add_(torch.bincount(pairs, minlength=n * n))
    model.train(was_training)
    return tasks.summarize(task, sums, split)


def fit(
    trainer: TrainerConfig,
    parts: Parts,
    state: LoopState,
    writer: SummaryWriter,
    ckpt: Checkpointing,
    stop: StopRequest,
    progress: Progress | None = None,
) -> LoopState:
    """Train until trainer.max_epochs (or max_steps) or early stopping; return the final state.
    A stop request (a signal) saves at the next step boundary and raises Interrupted."""
    model, optimizer, scheduler, task = parts.model, parts.optimizer, parts.scheduler, parts.task
    eval_model = distributed.inner(model)
    device, per_step = parts.train.device, trainer.accumulate_grad_batches
    steps_per_epoch = -(-len(parts.train) // per_step)
    max_epochs = None if trainer.max_steps is not None else trainer.max_epochs
    clock, first_step = time.perf_counter(), state.step
    progress = progress or Progress("none", max_epochs, steps_per_epoch)
    model.train()
    try:
        while not _finished(trainer, state):
            epoch_start = time.perf_counter()
            # Batches add into `interval`; each log point folds it into the epoch's sums.
            epoch_sums, interval = _epoch_sums(task, device, state)
            progress.start_epoch(state.epoch, -(-state.batch_in_epoch // per_step))
            # closing(): an epoch left early (max_steps, a signal, an error) releases its loader
            # (DataLoader workers) at once rather than whenever the frame is collected.
            with closing(parts.train.epoch(state.epoch, start=state.batch_in_epoch)) as batches:
                for group in _groups(batches, per_step):
                    results, bad_loss = train_step(
                        model, group, parts.loss_fn, optimizer, trainer.grad_clip_norm,
                        parts.precision, parts.check_every_step,
                    )  # fmt: skip
                    if state.step == first_step:
                        log.info(
                            f"first step {time.perf_counter() - trainlab.STARTED:.1f}s after start"
                        )
                    if bad_loss is not None:
                        _non_finite(trainer, state, bad_loss)  # raises Diverged, or skips this step
                        state.batch_in_epoch += len(group)
                        continue
                    for (loss, output), (_, y) in zip(results, group, strict=True):
                        tasks.accumulate(task, interval, loss, output, y)
                    state.step += 1
                    state.batch_in_epoch += len(group)
                    progress.advance()
                    if scheduler is not None and parts.scheduler_interval == "step":
                        step_in_epoch = -(-state.batch_in_epoch // per_step)
                        _step_per_batch(
                            scheduler, state.epoch + (step_in_epoch - 1) / steps_per_epoch
                        )
                    if state.step % trainer.log_every_n_steps == 0:
                        progress.show(_log_train(writer, task, interval, optimizer, state.step))
                        tasks.add(task, epoch_sums, interval)
                        interval = tasks.new_sums(task, device)
                    now = time.perf_counter()
                    state.train_s, clock = state.train_s + now - clock, now
                    if trainer.max_steps is not None and state.step >= trainer.max_steps:
                        break
                    if state.batch_in_epoch < len(parts.train):  # the epoch's end saves on its own
                        step_due = ckpt.every_n_steps and state.step % ckpt.every_n_steps == 0
                        at_log_point = state.step % trainer.log_every_n_steps == 0
                        stopping = _stop_agreed(
                            stop, device, parts.check_every_step or at_log_point
                        )
                        if step_due or stopping:
                            sums = {"epoch": epoch_sums, "interval": interval}
                            _save(ckpt, parts, state, None, sums=sums)
                        if stopping:
                            stop.check()
            _log_train(writer, task, interval, optimizer, state.step)
            tasks.add(task, epoch_sums, interval)
            progress.end_epoch()
            if state.batch_in_epoch >= len(parts.train):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            finished = _finished(trainer, state)

            seconds = time.perf_counter() - epoch_start
            record: dict[str, Any] = {"epoch": state.epoch, "step": state.step}
            record.update(tasks.summarize(task, epoch_sums, "train"))
            record["time/epoch_s"] = seconds
            record["time/samples_per_s"] = epoch_sums["n"] / max(seconds, 1e-9)
            if finished or state.epoch % trainer.val_every_epochs == 0:
                with eval_weights(parts):
                    record.update(
                        evaluate(eval_model, parts.val, parts.loss_fn, task, "val", parts.precision)
                    )
            improved = _track_best(trainer, state, record)
            if scheduler is not None and parts.scheduler_interval == "epoch":
                _step_per_epoch(scheduler, record.get(trainer.monitor))
            state.history.append(record)
            # train/* went out with the last interval above; the epoch adds val/* and time/*.
            epoch_scalars = {k: v for k, v in record.items() if k.startswith(("val/", "time/"))}
            metrics.log_scalars(writer, epoch_scalars, state.step)
            log.info(metrics.format_epoch(state.epoch, max_epochs, record))
            histograms = trainer.tensorboard.histograms_every_n_epochs
            if histograms and state.epoch % histograms == 0:
                metrics.log_histograms(writer, checkpoint.unwrap(model), state.step)

            patience = trainer.early_stopping.patience
            if patience is not None and state.bad_validations >= patience:
                state.stopped_early = True
                log.info(
                    f"early stopping: {trainer.monitor} did not improve in {patience} validations"
                )
            finished = finished or state.stopped_early
            now = time.perf_counter()
            state.train_s, clock = state.train_s + now - clock, now
            epoch_due = ckpt.every_n_epochs and state.epoch % ckpt.every_n_epochs == 0
            step_due = ckpt.every_n_steps and state.step % ckpt.every_n_steps == 0
            stopping = _stop_agreed(stop, device, True)
            if finished or improved or epoch_due or step_due or stopping:
                _save(ckpt, parts, state, record.get(trainer.monitor), best=improved)
            if stopping:
                stop.check()
    finally:
        _drain(ckpt)  # every save handed to the writer is committed before fit returns
    return state


def _stop_agreed(stop: StopRequest, device: torch.device, compare: bool) -> bool:
    """Whether to save and stop here. One process: whether a signal came. Under DDP the ranks
    compare their requests where `compare` (every step on the CPU; on GPUs at log points, to
    spare a sync per step; every epoch's end) and a signal on any rank stops them all at the
    same step; elsewhere no rank stops, so none waits in a collective alone."""
    if not distributed.active():
        return stop.signum is not None
    if not compare:
        return False
    signum = distributed.max_over_ranks(stop.signum or 0, device)
    if signum and stop.signum is None:
        stop.signum = signum  # another rank got the signal: stop with it
    return signum > 0


@contextmanager
def eval_weights(parts: Parts) -> Iterator[None]:
    """With optimizer.eval_with_average (ASGD), swap in the averaged weights `ax` for the
    duration; the raw weights come back afterwards and training continues from them."""
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


def _groups(batches: Iterator[tuple[Tensor, Target]], size: int) -> Iterator[list]:
    """Consecutive batches, `size` at a time (the last group of an epoch may be shorter)."""
    group: list = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _step_per_batch(scheduler: LRScheduler, fractional_epoch: float) -> None:
    # CosineAnnealingWarmRestarts counts epochs: the torch docs step it each batch with the
    # fractional epoch. Every other scheduler counts its calls.
    if isinstance(scheduler, CosineAnnealingWarmRestarts):
        scheduler.step(fractional_epoch)
    else:
        scheduler.step()


def _step_per_epoch(scheduler: LRScheduler, monitored: float | None) -> None:
    # ReduceLROnPlateau steps on the monitored metric, only after epochs that measured it.
    if isinstance(scheduler, ReduceLROnPlateau):
        if monitored is not None:
            scheduler.step(monitored)
    else:
        scheduler.step()


def _finished(trainer: TrainerConfig, state: LoopState) -> bool:
    if state.stopped_early:
        return True
    if trainer.max_steps is not None:
        return state.step >= trainer.max_steps
    return state.epoch >= trainer.max_epochs


def _log_train(
    writer: SummaryWriter,
    task: Task,
    sums: dict[str, Tensor],
    optimizer: Optimizer,
    step: int,
) -> dict[str, float]:
    """Log and return the train/* means since the last point, and each group's lr. A
    non-finite mean means the loss diverged since the last point (when it is not checked at
    every step)."""
    scalars = tasks.summarize(task, sums, "train")
    if not scalars:
        return scalars
    if not math.isfinite(scalars["train/loss"]):
        raise Diverged(
            f"train/loss is {scalars['train/loss']} in the steps up to {step}; the last good "
            "checkpoint is kept. Lower optimizer.lr, set trainer.grad_clip_norm, or "
            "trainer.nan_policy=skip"
        )
    metrics.log_scalars(writer, scalars | metrics.lr_scalars(optimizer), step)
    return scalars


def _track_best(trainer: TrainerConfig, state: LoopState, record: dict[str, Any]) -> bool:
    """Update best/bad_validations from this epoch's record; True if the monitor improved."""
    value = record.get(trainer.monitor)
    if value is None:
        return False
    delta = trainer.early_stopping.min_delta
    if monitor_mode(trainer) == "min":
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
    ckpt: Checkpointing,
    parts: Parts,
    state: LoopState,
    metric: float | None,
    best: bool = False,
    sums: dict[str, dict[str, Tensor]] | None = None,
) -> None:
    """Save a checkpoint of everything (best.pt too if `best`); `sums` are the running sums of
    an epoch saved in the middle. A failed save stops the run or, with on_error=continue, is
    reported and training goes on (the previous checkpoints are intact either way)."""
    started = time.perf_counter()
    # A shallow dict: torch.save serialises it at once, nothing needs a copy.
    loop_state = {f.name: getattr(state, f.name) for f in fields(state)}
    if sums is not None:
        partial = {k: tasks.state(parts.task, v) for k, v in sums.items()}
        # Never save what a NaN step may have touched (on any rank).
        bad = not parts.check_every_step and any(
            not math.isfinite(float(part["loss"])) for part in partial.values()
        )
        if distributed.any_rank(bad, parts.train.device):
            raise Diverged(
                f"train/loss became NaN or Inf before step {state.step}; the last good "
                "checkpoint is kept"
            )
        loop_state["partial_sums"] = partial
    # DDP: each rank's own random streams and running sums, for an exact resume of each.
    ranks = None
    if distributed.active():
        mine = {"rng": checkpoint.capture_rng(), "partial_sums": loop_state["partial_sums"]}
        ranks = distributed.gather_objects(mine)
    if not ckpt.main:
        return
    args = (parts.model, parts.optimizer, parts.scheduler, parts.precision.scaler)
    snapshot = checkpoint.state_dict(*args, loop_state, ckpt.config, ckpt.environment, ranks)
    best_payload = None
    if best and parts.eval_with_average:
        with eval_weights(parts):  # best.pt holds the weights that were validated: `ax`
            averaged = snapshot | {"model": checkpoint.unwrap(parts.model).state_dict()}
            best_payload = checkpoint.serialize(averaged)
    payload = checkpoint.serialize(snapshot)  # the snapshot; the files are written meanwhile
    info = {
        "epoch": state.epoch,
        "step": state.step,
        "batch_in_epoch": state.batch_in_epoch,
        "metric": metric,
    }
    try:
        ckpt.writer.submit(payload, info, best, best_payload)  # waits for the previous save
    except CheckpointSaveError as e:
        if ckpt.on_error == "stop":
            raise
        log.warning(f"{e}; training goes on (trainer.checkpoint.on_error=continue)")
        ckpt.writer.submit(payload, info, best, best_payload)
    state.checkpoint_s += time.perf_counter() - started


def _drain(ckpt: Checkpointing) -> None:
    if ckpt.writer is None:
        return
    try:
        ckpt.writer.wait()
    except CheckpointSaveError as e:
        if ckpt.on_error == "stop":
            raise
        log.warning(f"{e}; training goes on (trainer.checkpoint.on_error=continue)")


def _epoch_sums(
    task: Task, device: torch.device, state: LoopState
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Fresh running sums, or the ones a checkpoint saved in the middle of this epoch."""
    if state.partial_sums is None:
        return tasks.new_sums(task, device), tasks.new_sums(task, device)
    saved, state.partial_sums = state.partial_sums, None
    return tasks.from_state(saved["epoch"], device), tasks.from_state(saved["interval"], device)


def _non_finite(trainer: TrainerConfig, state: LoopState, value: float) -> None:
    where = f"step {state.step + 1} (epoch {state.epoch + 1}, batch {state.batch_in_epoch + 1})"
    if trainer.nan_policy == "skip" and state.nan_skips < trainer.nan_skip_limit:
        state.nan_skips += 1
        log.warning(f"train/loss is {value} at {where}: step skipped ({state.nan_skips} so far)")
        return
    limit = f" ({state.nan_skips} skipped before)" if trainer.nan_policy == "skip" else ""
    raise Diverged(
        f"train/loss is {value} at {where}{limit}; the last good checkpoint is kept. Lower "
        "optimizer.lr, set trainer.grad_clip_norm, or trainer.nan_policy=skip"
    )


def _detach(output: Any) -> Any:
    if isinstance(output, dict):
        return {k: v.detach() for k, v in output.items()}
    return output.detach()
