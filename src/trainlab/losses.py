"""Losses torch lacks (Dice, a weighted multi-task sum, the binary hinge, log-cosh as a custom
autograd op), and
torch's MSE adapted to class targets. Every loss returns the batch mean."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainlab.errors import ConfigError


class MSELoss(nn.MSELoss):
    """torch.nn.MSELoss that one-hot encodes integer class targets (squared loss for classifiers).

    Float targets are used as they are, exactly as torch.nn.MSELoss does.
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if not target.is_floating_point() and input.dim() == target.dim() + 1:
            target = F.one_hot(target, input.shape[-1]).to(input.dtype)
        return super().forward(input, target)


class DiceLoss(nn.Module):
    """1 - soft Dice coefficient over the batch, for segmentation logits of shape (N, C, ...).

    One channel (C = 1): binary; sigmoid probabilities against a 0/1 mask (N, ...) or (N, 1, ...).
    Several channels: softmax probabilities against class-index masks (N, ...), Dice per class,
    averaged over the classes (without class 0 when include_background is false).
    `eps` is added to numerator and denominator: it smooths the loss and defines empty masks.
    """

    def __init__(self, eps: float, include_background: bool) -> None:
        super().__init__()
        self.eps, self.include_background = eps, include_background

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.shape[1] == 1:
            prob = torch.sigmoid(input[:, 0])
            true = target.reshape(prob.shape).to(prob.dtype)
            dims: tuple[int, ...] = tuple(range(prob.dim()))
        else:
            prob = torch.softmax(input, dim=1)
            true = F.one_hot(target, input.shape[1]).movedim(-1, 1).to(prob.dtype)
            dims = (0, *range(2, prob.dim()))
        inter = (prob * true).sum(dims)
        dice = (2 * inter + self.eps) / (prob.sum(dims) + true.sum(dims) + self.eps)
        if input.shape[1] > 1 and not self.include_background:
            dice = dice[1:]
        return 1 - dice.mean()


class MultiTaskLoss(nn.Module):
    """sum over heads of weights[head] * losses[head](output[head], target[head]); the model
    returns a dict of named outputs and the dataset a dict of named targets."""

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        if set(weights) != set(losses):
            raise ConfigError(
                f"loss.weights names {sorted(weights)} but loss.losses names {sorted(losses)}: "
                "give one weight per named loss"
            )
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = dict(weights)

    def forward(self, output: Mapping[str, Tensor], target: Mapping[str, Any]) -> Tensor:
        terms = [self.weights[k] * loss(output[k], target[k]) for k, loss in self.losses.items()]
        return torch.stack(terms).sum()


class BinaryHingeLoss(nn.Module):
    """The binary hinge: mean(max(0, margin - y f(x))) on targets y in {-1, +1} and one score f(x)
    per output (binary or multi-label); `squared` squares each term (the L2-SVM loss)."""

    def __init__(self, margin: float, squared: bool) -> None:
        super().__init__()
        self.margin, self.squared = margin, squared

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        terms = F.relu(self.margin - target.reshape(input.shape).to(input.dtype) * input)
        return (terms * terms if self.squared else terms).mean()


class AdversarialLoss(nn.Module):
    """The losses of a GAN on the discriminator's scores (logits of "real"), by `kind`:
    - minimax_nonsaturating (Goodfellow et al., 2014): D minimises -E[log D(x)] -
      E[log(1 - D(G(z)))]; G minimises -E[log D(G(z))] (the non-saturating form);
    - hinge (Lim & Ye 2017; SAGAN, BigGAN): D minimises E[max(0, 1 - D(x))] +
      E[max(0, 1 + D(G(z)))]; G minimises -E[D(G(z))].
    Log-probabilities come from logsigmoid, stable for any score."""

    KINDS = ("minimax_nonsaturating", "hinge")

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ConfigError(f"loss.kind={kind}: must be one of {', '.join(self.KINDS)}")
        self.kind = kind

    def discriminator(self, real: Tensor, fake: Tensor) -> Tensor:
        if self.kind == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        # -log D(x) = -logsigmoid(s); -log(1 - D(G(z))) = -logsigmoid(-s)
        return -F.logsigmoid(real).mean() - F.logsigmoid(-fake).mean()

    def generator_terms(self, fake: Tensor) -> Tensor:
        """G's loss per generated sample; its mean is the generator's loss."""
        return -fake if self.kind == "hinge" else -F.logsigmoid(fake)

    def forward(self, real: Tensor, fake: Tensor) -> Tensor:
        return self.discriminator(real, fake)


class MaskedMSELoss(nn.Module):
    """A masked autoencoder's loss: the mean squared error over the hidden elements only,
    sum(mask * (pred - target)^2) / sum(mask), for outputs {"pred": ..., "mask": 1 where
    hidden} (autoencoders.MaskedAutoencoder)."""

    def forward(self, output: Mapping[str, Tensor], target: Tensor) -> Tensor:
        pred, mask = output["pred"], output["mask"]
        err = (pred - target.reshape(pred.shape).to(pred.dtype)).square()
        return (err * mask).sum() / mask.sum().clamp(min=1)


class InfoNCELoss(nn.Module):
    """InfoNCE as SimCLR's NT-Xent (Chen et al., 2020), on the two views' embeddings (N, 2, D):
    the 2N embeddings are L2-normalised; for each one, -log(exp(s_pos / t) / sum over the
    other 2N - 1 of exp(s / t)), s the cosine similarity, pos its other view, t the
    temperature; the mean over all 2N. The targets (labels) are not used."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"loss.temperature={temperature}: must be > 0, e.g. 0.5")
        self.temperature = temperature

    def forward(self, views: Tensor, target: Any = None) -> Tensor:
        n = len(views)
        z = F.normalize(torch.cat([views[:, 0], views[:, 1]]), dim=1)
        logits = z @ z.T / self.temperature
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -math.inf)
        positive = torch.arange(2 * n, device=z.device).roll(n)  # i <-> i + n
        return F.cross_entropy(logits, positive)


class TripletLoss(nn.Module):
    """The triplet margin loss on the two views' embeddings (N, 2, D): anchor = view 1,
    positive = view 2 of the same sample, negative = view 2 of the next sample in the batch;
    mean(max(0, |a - p| - |a - n| + margin)) with torch's triplet_margin_loss (L2). The
    targets (labels) are not used: a negative may share its anchor's class."""

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, views: Tensor, target: Any = None) -> Tensor:
        anchor, positive = views[:, 0], views[:, 1]
        return F.triplet_margin_loss(anchor, positive, positive.roll(1, 0), margin=self.margin)


class _LogCosh(torch.autograd.Function):
    """mean(log(cosh(input - target))) with a hand-written backward: d/dx = tanh(x - y) / n."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, target: Tensor) -> Tensor:
        diff = input - target
        ctx.save_for_backward(diff)
        a = diff.abs()
        # log(cosh(d)) = |d| + log(1 + exp(-2|d|)) - log 2: no overflow for large |d|.
        return (a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)).mean()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, Tensor]:
        (diff,) = ctx.saved_tensors
        grad = grad_output * torch.tanh(diff) / diff.numel()
        return grad, -grad


class LogCoshLoss(nn.Module):
    """Log-cosh regression loss: ~ squared error near zero, ~ absolute error far away."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _LogCosh.apply(input, target.reshape(input.shape).to(input.dtype))
