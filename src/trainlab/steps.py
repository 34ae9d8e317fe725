"""One optimizer step: train_step, the supervised step (forward, backward, clip, step). Pure:
it returns tensors and neither logs nor writes; fit decides what to do with them. The steps
of other task families (adversarial, reconstruction, contrastive) belong here beside it."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from trainlab import distributed
from trainlab.parts import Precision
from trainlab.tasks import Target


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
