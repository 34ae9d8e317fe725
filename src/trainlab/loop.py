"""The training loop: evaluate and fit (the step functions, supervised and others, are in
steps.py). fit reads as a table of contents: for each epoch, for each optimizer step (one or
more batches): step, maybe log, maybe save; then the end of the epoch: summarise, validate,
keep the best, schedule, maybe stop early, save. Each part is a named helper below it;
Cadence answers "log / save / compare signals / stop now?"."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import closing, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

import trainlab
from trainlab import adversarial, checkpoint, distributed, metrics, reconstruction, schedules, tasks
from trainlab.checkpoint_files import Saver
from trainlab.config import Interval, NanPolicy, ProgressMode, TrainerConfig, monitor_mode
from trainlab.console import format_epoch
from trainlab.errors import Diverged
from trainlab.metrics import Events
from trainlab.parts import Batches, LoopState, Parts, Precision, eval_weights
from trainlab.progress import Clock, Progress
from trainlab.signals import StopRequest
from trainlab.steps import Step
from trainlab.studies import Pruned, Pruning
from trainlab.tasks import Target, Task

log = logging.getLogger(__name__)


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
            tasks.count_confusion(confusion, output, y)
    model.train(was_training)
    return tasks.summarize(task, sums, split)


def evaluation_of(step: Step) -> Callable[..., dict[str, float]]:
    """A step's evaluation (validation, the test, `trainlab eval`): its own, or `evaluate`."""
    return step.evaluate or evaluate


def fit(
    trainer: TrainerConfig,
    parts: Parts,
    state: LoopState,
    events: Events,
    saver: Saver,
    stop: StopRequest,
    progress_mode: str = ProgressMode.none,
    started: float | None = None,
    pruning: Pruning | None = None,
) -> LoopState:
    """Train until trainer.max_epochs (or max_steps) or early stopping; return the final state.
    A stop request (a signal) saves at the next step boundary and raises Interrupted; a sweep's
    pruner (`pruning`) saves at the end of the epoch and raises Pruned. `started`: when this
    attempt started (perf_counter; default: the process's start)."""
    cadence = Cadence(trainer, len(parts.train), parts.check_every_step, stop, parts.train.device)
    clock = Clock(state, trainlab.STARTED if started is None else started)
    progress = Progress(progress_mode, cadence.max_epochs, cadence.steps_per_epoch)
    parts.model.train()
    try:
        while not cadence.finished(state):
            epoch_start = time.perf_counter()
            sums = RunningSums.start(parts.task, parts.train.device, state)
            progress.start_epoch(state.epoch, cadence.steps_taken(state))
            # closing(): an epoch left early (max_steps, a signal, an error) releases its loader
            # (DataLoader workers) at once rather than whenever the frame is collected.
            with closing(parts.train.epoch(state.epoch, start=state.batch_in_epoch)) as batches:
                for group in _groups(batches, trainer.batches_per_step()):
                    stepped = _optimizer_step(trainer, parts, state, group, sums, cadence)
                    clock.tick(state)
                    if not stepped:
                        continue  # a non-finite loss, skipped (trainer.nan_policy=skip)
                    progress.advance()
                    if cadence.log_now(state):
                        progress.show(_log_point(events, parts, sums, state.step))
                    if cadence.last_step(state):
                        break
                    if cadence.mid_epoch(state):  # the epoch's end saves on its own
                        _save_mid_epoch(events, saver, parts, state, sums, cadence)
            _log_point(events, parts, sums, state.step)
            progress.end_epoch()
            improved = _end_epoch(trainer, parts, state, sums, events, epoch_start, cadence)
            clock.tick(state)
            # Collectives under DDP: every rank reaches them, before any short-circuit below.
            stopping = cadence.stopping(state, end_of_epoch=True)
            pruned = None  # why the sweep's pruner stops this trial (rank 0 asks the study)
            if pruning is not None:
                pruned = distributed.broadcast_object(pruning.check(state.history[-1]))
            due = cadence.finished(state) or improved or stopping or pruned
            if due or cadence.save_due(state, True):
                _save(events, saver, parts, state, state.history[-1].get(trainer.monitor), improved)
            if stopping:
                stop.check()
            if pruned:
                raise Pruned(pruned)
    finally:
        saver.drain()  # every save handed to the writer is committed before fit returns
    return state


@dataclass
class Cadence:
    """When, in the loop: log, save, validate, compare stop signals, stop. Every answer comes
    from the trainer config and the loop state, so a resumed run asks the same questions at
    the same steps."""

    trainer: TrainerConfig
    batches_per_epoch: int
    check_every_step: bool
    stop: StopRequest
    device: torch.device

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.batches_per_epoch // self.trainer.batches_per_step())

    @property
    def max_epochs(self) -> int | None:
        return None if self.trainer.max_steps is not None else self.trainer.max_epochs

    def steps_taken(self, state: LoopState) -> int:
        """Optimizer steps of the current epoch already taken."""
        return -(-state.batch_in_epoch // self.trainer.batches_per_step())

    def fractional_epoch(self, state: LoopState) -> float:
        """Where the last step ends, in epochs (a per-batch scheduler's clock)."""
        return state.epoch + (self.steps_taken(state) - 1) / self.steps_per_epoch

    def finished(self, state: LoopState) -> bool:
        if state.stopped_early:
            return True
        if self.trainer.max_steps is not None:
            return state.step >= self.trainer.max_steps
        return state.epoch >= self.trainer.max_epochs

    def last_step(self, state: LoopState) -> bool:
        return self.trainer.max_steps is not None and state.step >= self.trainer.max_steps

    def mid_epoch(self, state: LoopState) -> bool:
        return state.batch_in_epoch < self.batches_per_epoch

    def log_now(self, state: LoopState) -> bool:
        return state.step % self.trainer.log_every_n_steps == 0

    def validate_now(self, state: LoopState) -> bool:
        return self.finished(state) or state.epoch % self.trainer.val_every_epochs == 0

    def save_due(self, state: LoopState, end_of_epoch: bool = False) -> bool:
        every = self.trainer.checkpoint
        by_steps = every.every_n_steps is not None and state.step % every.every_n_steps == 0
        by_epochs = every.every_n_epochs is not None and state.epoch % every.every_n_epochs == 0
        return by_steps or (end_of_epoch and by_epochs)

    def stopping(self, state: LoopState, end_of_epoch: bool = False) -> bool:
        """Whether to save and stop here. One process: whether a signal came. Under DDP the
        ranks compare their requests in a collective (every step on the CPU; on GPUs at log
        points, to spare a sync per step; at every epoch's end), and a signal on any rank
        stops them all at the same step. The collective is one every rank must reach: nothing
        may short-circuit before it on one rank and not on the others, or that rank waits
        alone."""
        if not distributed.active():
            return self.stop.signum is not None
        if not (end_of_epoch or self.check_every_step or self.log_now(state)):
            return False
        signum = distributed.max_over_ranks(self.stop.signum or 0, self.device)
        if signum and self.stop.signum is None:
            self.stop.signum = signum  # another rank got the signal: stop with it
        return signum > 0


@dataclass
class RunningSums:
    """The epoch's running sums and those since the last log point: batches add into
    `since_log`, each log point folds it into `epoch`. A save in the middle of an epoch keeps
    both."""

    task: Task
    device: torch.device
    epoch: tasks.Sums
    since_log: tasks.Sums

    @classmethod
    def start(cls, task: Task, device: torch.device, state: LoopState) -> RunningSums:
        """Fresh sums, or the ones a checkpoint saved in the middle of this epoch."""
        if state.partial_sums is None:
            return cls(task, device, tasks.new_sums(task, device), tasks.new_sums(task, device))
        saved, state.partial_sums = state.partial_sums, None
        # "interval": the checkpoint's name for the sums since the last log point.
        epoch, since_log = (tasks.from_state(saved[k], device) for k in ("epoch", "interval"))
        return cls(task, device, epoch, since_log)

    def add(self, results: list[tuple[Tensor, Any]], group: list[tuple[Tensor, Target]]) -> None:
        for (loss, output), (_, y) in zip(results, group, strict=True):
            tasks.accumulate(self.task, self.since_log, loss, output, y)

    def fold(self) -> None:
        tasks.add(self.task, self.epoch, self.since_log)
        self.since_log = tasks.new_sums(self.task, self.device)

    def saved(self) -> dict[str, tasks.Sums]:
        return {"epoch": self.epoch, "interval": self.since_log}


def _optimizer_step(
    trainer: TrainerConfig, parts: Parts, state: LoopState, group: list[tuple[Tensor, Target]],
    sums: RunningSums, cadence: Cadence,
) -> bool:  # fmt: skip
    """One step of the run's step function (steps.py) over `group`, its batches added to the
    running sums and the per-batch schedulers stepped. False: the loss was NaN/Inf and the step
    was skipped (trainer.nan_policy=skip; under stop, Diverged is raised)."""
    results, bad_loss = parts.step.run(parts, group, trainer)
    if bad_loss is not None:
        _non_finite(trainer, state, bad_loss)  # raises Diverged, or skips this step
        state.batch_in_epoch += len(group)
        return False
    sums.add(results, group)
    state.step += 1
    state.batch_in_epoch += len(group)
    for scheduler, interval in parts.schedulers():
        if interval == Interval.step:
            schedules.step_per_batch(scheduler, cadence.fractional_epoch(state))
    return True


def _log_point(events: Events, parts: Parts, sums: RunningSums, step: int) -> dict[str, float]:
    """Log the train/* means since the last log point and the learning rates, and fold those
    sums into the epoch's; returns the means."""
    scalars = _log_train(events, parts.task, sums.since_log, parts.optimizers(), step)
    sums.fold()
    return scalars


def _end_epoch(
    trainer: TrainerConfig, parts: Parts, state: LoopState, sums: RunningSums, events: Events,
    epoch_start: float, cadence: Cadence,
) -> bool:  # fmt: skip
    """Summarise the epoch, validate when due, keep the best, step a per-epoch scheduler,
    record and log it, and decide on early stopping. Returns whether the monitor improved."""
    if state.batch_in_epoch >= len(parts.train):
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    seconds = time.perf_counter() - epoch_start
    record: dict[str, Any] = {"epoch": state.epoch, "step": state.step}
    record.update(tasks.summarize(parts.task, sums.epoch, "train"))
    record["time/epoch_s"] = seconds
    record["time/samples_per_s"] = sums.epoch["n"] / max(seconds, 1e-9)
    if cadence.validate_now(state):
        with eval_weights(parts):
            model = distributed.inner(parts.model)
            validate = evaluation_of(parts.step)
            record |= validate(model, parts.val, parts.loss_fn, parts.task, "val", parts.precision)
    improved = _track_best(trainer, state, record)
    for scheduler, interval in parts.schedulers():
        if interval == Interval.epoch:
            schedules.step_per_epoch(scheduler, record.get(trainer.monitor))
    state.history.append(record)
    # train/* went out at the last log point above; the epoch adds val/* and time/*.
    events.scalars({k: v for k, v in record.items() if k.startswith(("val/", "time/"))}, state.step)
    log.info(format_epoch(state.epoch, cadence.max_epochs, record))
    histograms = trainer.tensorboard.histograms_every_n_epochs
    if histograms and state.epoch % histograms == 0:
        metrics.log_histograms(events, checkpoint.unwrap(parts.model), state.step)
    if parts.task.kind == "adversarial":  # the generator's samples from fixed noise
        adversarial.log_samples(events, checkpoint.unwrap(parts.model), state.step)
    if parts.task.kind == "reconstruction":  # inputs, reconstructions, targets
        reconstruction.log_reconstructions(events, checkpoint.unwrap(parts.model), parts.val,
                                           state.step)  # fmt: skip
    patience = trainer.early_stopping.patience
    if patience is not None and state.bad_validations >= patience:
        state.stopped_early = True
        log.info(f"early stopping: {trainer.monitor} did not improve in {patience} validations")
    return improved


def _save_mid_epoch(
    events: Events, saver: Saver, parts: Parts, state: LoopState, sums: RunningSums,
    cadence: Cadence,
) -> None:  # fmt: skip
    """Save here if a step count says so or a stop was asked for; then stop (Interrupted)."""
    # A collective under DDP: every rank reaches it, before any short-circuit below.
    stopping = cadence.stopping(state)
    if stopping or cadence.save_due(state):
        _save(events, saver, parts, state, None, sums=sums.saved())
    if stopping:
        cadence.stop.check()


def _save(
    events: Events, saver: Saver, parts: Parts, state: LoopState, metric: float | None,
    best: bool = False, sums: dict[str, tasks.Sums] | None = None,
) -> None:  # fmt: skip
    """Every event up to here is made durable first: a resume purges what comes after its
    checkpoint, so nothing before it may still be in a buffer."""
    events.flush()
    checkpoint.save(saver, parts, state, metric, best, sums)


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


def _log_train(
    events: Events,
    task: Task,
    sums: dict[str, Tensor],
    optimizers: dict[str, Optimizer],
    step: int,
) -> dict[str, float]:
    """Log and return the train/* means since the last point, and each optimizer group's lr
    (lr/group<i>; the generator's lr_g/group<i>). A non-finite mean means the loss diverged
    since the last point (when it is not checked at every step)."""
    scalars = tasks.summarize(task, sums, "train")
    if not scalars:
        return scalars
    if not math.isfinite(scalars["train/loss"]):
        raise Diverged(
            f"train/loss is {scalars['train/loss']} in the steps up to {step}; the last good "
            "checkpoint is kept. Lower optimizer.lr, set trainer.grad_clip_norm, or "
            "trainer.nan_policy=skip"
        )
    rates = {}
    for name, optimizer in optimizers.items():
        rates |= metrics.lr_scalars(optimizer, "lr" + name.removeprefix("optimizer"))
    events.scalars(scalars | rates, step)
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
        state.best, state.best_step = value, state.step
        state.bad_validations = 0
    else:
        state.bad_validations += 1
    return improved


def _non_finite(trainer: TrainerConfig, state: LoopState, value: float) -> None:
    where = f"step {state.step + 1} (epoch {state.epoch + 1}, batch {state.batch_in_epoch + 1})"
    if trainer.nan_policy == NanPolicy.skip and state.nan_skips < trainer.nan_skip_limit:
        state.nan_skips += 1
        log.warning(f"train/loss is {value} at {where}: step skipped ({state.nan_skips} so far)")
        return
    limit = f" ({state.nan_skips} skipped before)" if trainer.nan_policy == NanPolicy.skip else ""
    raise Diverged(
        f"train/loss is {value} at {where}{limit}; the last good checkpoint is kept. Lower "
        "optimizer.lr, set trainer.grad_clip_norm, or trainer.nan_policy=skip"
    )
