"""A user's own training steps, as `trainer.step=<dotpath>` runs them (tests/test_steps.py):
written against trainlab.steps' contract only, without touching the loop."""

from __future__ import annotations

import torch

from trainlab.steps import Step, supervised_step


class WeightAverage:
    """An exponential moving average of a model's floating-point weights: state a step
    declares, so every checkpoint saves it and a resume brings it back."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {
            k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, value in model.state_dict().items():
            if name in self.shadow:
                self.shadow[name].lerp_(value, 1 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        for name, value in self.shadow.items():
            value.copy_(state["shadow"][name])


def ema_train(parts, batches, trainer):
    results, bad_loss = supervised_step(parts, batches, trainer)
    if bad_loss is None:
        parts.extra["ema"].update(parts.model)
    return results, bad_loss


ema_step = Step(
    ema_train, extra_state=lambda cfg, trainer, parts: {"ema": WeightAverage(parts.model, 0.9)}
)


def plain_step(parts, batches, trainer):
    """A plain function is a step too (no extra state, the supervised evaluation)."""
    return supervised_step(parts, batches, trainer)


clashing_step = Step(plain_step, extra_state=lambda cfg, trainer, parts: {"optimizer": None})
