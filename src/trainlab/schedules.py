"""LR schedules torch lacks (linear warmup, then a named decay, as a LambdaLR), and how the loop
steps a scheduler: per optimizer step or per epoch, as each kind wants."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingWarmRestarts,
    LambdaLR,
    LRScheduler,
    ReduceLROnPlateau,
)

from trainlab.errors import ConfigError

DECAYS = ("constant", "linear", "cosine")


@dataclass
class WarmupThenDecay:
    """lr factor at interval t: start_factor -> 1 linearly over warmup_steps, then `decay`
    from 1 to min_factor at total_steps. A dataclass, not a lambda: LambdaLR saves its fields
    in the scheduler's state_dict, and resume rebuilds it from the config either way."""

    warmup_steps: int
    start_factor: float
    decay: str
    total_steps: int
    min_factor: float

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.start_factor + (1 - self.start_factor) * t / self.warmup_steps
        progress = min(1.0, (t - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.decay == "constant":
            return 1.0
        linear = self.decay == "linear"
        shape = 1 - progress if linear else 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_factor + (1 - self.min_factor) * shape


def lambda_warmup(
    optimizer: Optimizer,
    warmup_steps: int,
    start_factor: float,
    decay: str,
    total_steps: int,
    min_factor: float,
    last_epoch: int = -1,
) -> LambdaLR:
    if decay not in DECAYS:
        raise ConfigError(f"scheduler.decay={decay}: must be one of {', '.join(DECAYS)}")
    if not 0 <= warmup_steps < total_steps:
        raise ConfigError(
            f"scheduler.warmup_steps={warmup_steps}: must be >= 0 and shorter than the run "
            f"({total_steps} scheduler intervals)"
        )
    schedule = WarmupThenDecay(warmup_steps, start_factor, decay, total_steps, min_factor)
    return LambdaLR(optimizer, schedule, last_epoch=last_epoch)


def step_per_batch(scheduler: LRScheduler, fractional_epoch: float) -> None:
    """One step of a scheduler with interval: step, after an optimizer step."""
    # CosineAnnealingWarmRestarts counts epochs: the torch docs step it each batch with the
    # fractional epoch. Every other scheduler counts its calls.
    if isinstance(scheduler, CosineAnnealingWarmRestarts):
        scheduler.step(fractional_epoch)
    else:
        scheduler.step()


def step_per_epoch(scheduler: LRScheduler, monitored: float | None) -> None:
    """One step of a scheduler with interval: epoch, after the epoch's validation."""
    # ReduceLROnPlateau steps on the monitored metric, only after epochs that measured it.
    if isinstance(scheduler, ReduceLROnPlateau):
        if monitored is not None:
            scheduler.step(monitored)
    else:
        scheduler.step()
