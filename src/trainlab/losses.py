"""Losses torch lacks, or torch losses adapted to trainlab's tasks."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class MSELoss(nn.MSELoss):
    """torch.nn.MSELoss that one-hot encodes integer class targets (squared loss for classifiers).

    Float targets are used as they are, exactly as torch.nn.MSELoss does.
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if not target.is_floating_point() and input.dim() == target.dim() + 1:
            target = F.one_hot(target, input.shape[-1]).to(input.dtype)
        return super().forward(input, target)
