"""What task=contrastive adds to the supervised step (steps.py): each training sample comes
as two views (`dataset.views`: a random shift, a scaling and Gaussian noise, drawn per sample,
and epoch, so a resumed epoch sees the same views), the model embeds both
(embedders.Embedder) and the loss pulls each pair together (losses.InfoNCELoss or
TripletLoss). No labels are used to train. Evaluation is the classic protocol's k-NN
accuracy: each sample of the split is classified by the majority label of its
trainer.knn_k nearest other samples, by cosine similarity of the encoder's features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn import functional as F

from trainlab import tasks
from trainlab.seeds import sample_seeds

VIEWS_STREAM = 0xC1


@dataclass(frozen=True)
class TwoViews:
    """x (N, *shape) -> (N, 2, *shape): two augmented views of every sample. Each view is the
    sample circularly shifted by up to `shift` positions along each spatial axis, scaled by
    1 + U(-scale, scale), plus N(0, noise^2) per element."""

    shift: int
    scale: float
    noise: float
    seed: int

    @classmethod
    def from_config(cls, node: DictConfig, seed: int) -> TwoViews:
        return cls(int(node.shift), float(node.scale), float(node.noise), seed)

    def __call__(self, x: Tensor, idx: Tensor, epoch: int) -> Tensor:
        spatial = 1 if x.dim() == 2 else x.dim() - 2  # a signal's one axis, an image's two
        draws, g = [], torch.Generator()
        for seed in sample_seeds(self.seed, (VIEWS_STREAM, epoch), idx):
            g.manual_seed(seed)  # this sample's two views: shifts, factors, noise
            shifts = torch.randint(-self.shift, self.shift + 1, (2, spatial), generator=g)
            factors = 1 + self.scale * (2 * torch.rand(2, generator=g) - 1)
            draws.append((shifts, factors, torch.randn(2, *x.shape[1:], generator=g)))
        shifts, factors, noise = (torch.stack(d).to(x.device) for d in zip(*draws, strict=True))
        pairs = x[:, None].expand(-1, 2, *x.shape[1:]).flatten(0, 1)  # (2N, *shape)
        pairs = roll_each(pairs, shifts.flatten(0, 1))
        scale = factors.flatten().reshape(-1, *[1] * (x.dim() - 1))
        views = pairs * scale.to(x.dtype) + self.noise * noise.flatten(0, 1).to(x.dtype)
        return views.reshape(len(x), 2, *x.shape[1:])


def roll_each(x: Tensor, shifts: Tensor) -> Tensor:
    """torch.roll of each row of x by its own shifts (M, k) along x's last k axes."""
    for k in range(shifts.shape[1]):
        dim = x.dim() - shifts.shape[1] + k
        size = x.shape[dim]
        index = (torch.arange(size, device=x.device) - shifts[:, k : k + 1]) % size
        shape = [len(x)] + [1] * (x.dim() - 1)
        shape[dim] = size
        x = x.gather(dim, index.reshape(shape).expand_as(x))
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Any, loss_fn: nn.Module, task: tasks.Task, split: str,
    precision: Any = None, confusion: Tensor | None = None,
) -> dict[str, float]:  # fmt: skip
    """{split/knn_acc}: the leave-one-out k-NN accuracy of the split's embeddings (the
    encoder's features of the samples as they are)."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    for x, y in batches.epoch(0):
        features.append(model(x).float())
        labels.append(y)
    model.train(was_training)
    return {f"{split}/knn_acc": knn_accuracy(torch.cat(features), torch.cat(labels), task.knn_k)}


def knn_accuracy(features: Tensor, labels: Tensor, k: int) -> float:
    """Leave-one-out: each sample's label predicted by the majority label of its k nearest
    other samples by cosine similarity (ties to the smallest label, as scikit-learn's
    KNeighborsClassifier does)."""
    n = len(features)
    if n < 2:
        return float("nan")
    k = min(k, n - 1)
    z = F.normalize(features.double(), dim=1)
    similarity = z @ z.T
    similarity.fill_diagonal_(-float("inf"))
    neighbours = similarity.topk(k, dim=1).indices
    classes = int(labels.max()) + 1
    votes = torch.zeros(n, classes, dtype=torch.int64, device=features.device)
    votes.scatter_add_(1, labels[neighbours], torch.ones_like(neighbours))
    return (votes.argmax(1) == labels).double().mean().item()
