"""The training steps, and the contract they share (docs/architecture.md, "The step
contract").

A step is `step(parts, batches, trainer) -> (results, bad_loss)`: it gets the run's Parts (the
model, loss, optimizer, precision and `parts.extra`, the state it declared), the batches of
one optimizer step (trainer.batches_per_step(): accumulate_grad_batches of them, or
d_steps_per_g_step for the adversarial step) and the trainer config; it trains on them and
returns, for each batch in order, its detached loss and output (what the task's metrics are
computed from), and None, or the non-finite loss value when it took no step. Pure: it
neither logs nor writes nor touches the loop's counters; fit does. A Step bundles the
function with what it declares: its extra state (built once from the run's config, saved in
every checkpoint under its names and restored on resume, like the model) and its evaluation
(None: the supervised `evaluate`). `trainer.step=<dotpath>` names a Step or a plain step
function of your own; the built-in ones (SUPERVISED: train_step; ADVERSARIAL:
adversarial_step) are written against the same contract.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.optim import Optimizer

from trainlab import adversarial, contrastive, distributed
from trainlab.errors import ConfigError
from trainlab.tasks import Target

if TYPE_CHECKING:
    from trainlab.config import TrainerConfig
    from trainlab.parts import Parts, Precision

Batch = tuple[Tensor, Target]
StepResult = tuple[list[tuple[Tensor, Any]], float | None]


@dataclass(frozen=True)
class Step:
    """A step function and what it declares: `extra_state(cfg, trainer, parts)` returns the named
    stateful objects it needs beyond the model and optimizer (each has state_dict and
    load_state_dict; they land in parts.extra and in every checkpoint under these names), and
    `evaluate` has loop.evaluate's signature (None: the supervised evaluate)."""

    run: Callable[[Parts, list[Batch], TrainerConfig], StepResult]
    extra_state: Callable[[DictConfig, TrainerConfig, Parts], dict[str, Any]] | None = None
    evaluate: Callable[..., dict[str, float]] | None = None


def supervised_step(parts: Parts, batches: list[Batch], trainer: TrainerConfig) -> StepResult:
    """The supervised step: train_step on the run's model, loss and optimizer."""
    return train_step(
        parts.model, batches, parts.loss_fn, parts.optimizer, trainer.grad_clip_norm,
        parts.precision, parts.check_every_step,
    )  # fmt: skip


def adversarial_step(parts: Parts, batches: list[Batch], trainer: TrainerConfig) -> StepResult:
    """One generator step after len(batches) discriminator steps (trainer.d_steps_per_g_step):
    for each real batch, D learns to tell it from G(z) with G fixed; then G learns to fool D
    with D fixed, on a fresh batch of noise as large as the last real one. Each batch's
    result is D's loss and {d_real, d_fake, g_loss} per sample (g_loss on the last batch)."""
    gan, loss_fn, noise = parts.model, parts.loss_fn, parts.extra["noise"]
    opt_d, opt_g = parts.optimizer, parts.extra["optimizer_g"]
    results: list[tuple[Tensor, Any]] = []
    for x, _ in batches:
        with torch.no_grad(), parts.precision.autocast():
            fake = gan.generator(noise.sample(len(x), x.device))
        opt_d.zero_grad(set_to_none=True)
        with parts.precision.autocast():
            real_score, fake_score = gan.discriminator(x), gan.discriminator(fake)
            d_loss = loss_fn.discriminator(real_score, fake_score)
        if parts.check_every_step and not math.isfinite(d_loss.item()):
            return results, d_loss.item()
        d_loss.backward()
        _clip(gan.discriminator, trainer.grad_clip_norm)
        opt_d.step()
        results.append((d_loss.detach(), adversarial.scores(real_score, fake_score)))
    gan.discriminator.requires_grad_(False)  # G's step: no gradients for D
    try:
        opt_g.zero_grad(set_to_none=True)
        with parts.precision.autocast():
            fooled = gan.discriminator(gan.generator(noise.sample(len(x), x.device)))
            per_sample = loss_fn.generator_terms(fooled)
            g_loss = per_sample.mean()
        if parts.check_every_step and not math.isfinite(g_loss.item()):
            return results, g_loss.item()
        g_loss.backward()
        _clip(gan.generator, trainer.grad_clip_norm)
        opt_g.step()
    finally:
        gan.discriminator.requires_grad_(True)
    results[-1][1]["g_loss"] = per_sample.detach().float().reshape(-1)
    return results, None


SUPERVISED = Step(supervised_step)
ADVERSARIAL = Step(adversarial_step, adversarial.extra_state, adversarial.evaluate)
# task=reconstruction and task=contrastive train with the supervised step: what differs is in
# their data and loss, not in how the optimizer steps. A reconstruction's data gives
# (corrupted input, clean input) pairs (reconstruction.py; a masked autoencoder masks inside its
# forward); a contrastive run's gives two views of each sample, which the model embeds and the
# loss pulls together (contrastive.py), and it is evaluated by k-NN accuracy.
CONTRASTIVE = Step(supervised_step, evaluate=contrastive.evaluate)
BUILT_IN = {
    "supervised": SUPERVISED, "adversarial": ADVERSARIAL, "reconstruction": SUPERVISED,
    "contrastive": CONTRASTIVE,
}  # fmt: skip


def resolve(cfg: DictConfig) -> Step:
    """The run's Step: trainer.step's (checked like a `_target_`: by what it resolves to), or
    the task's own."""
    dotpath = cfg.trainer.step
    if dotpath is None:
        return BUILT_IN[cfg.task]
    from trainlab import targets

    found = targets.check_one(str(dotpath), "trainer.step")
    if isinstance(found, Step):
        return found
    if callable(found) and not isinstance(found, type):
        return Step(found)
    raise ConfigError(
        f"trainer.step={dotpath}: names a {type(found).__name__}, not a step function or a "
        "trainlab.steps.Step; see docs/architecture.md, 'The step contract'"
    )


def _clip(model: nn.Module, norm: float | None) -> None:
    if norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), norm)


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


def _detach(output: Any) -> Any:
    if isinstance(output, dict):
        return {k: v.detach() for k, v in output.items()}
    return output.detach()
