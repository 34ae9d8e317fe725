"""What task=reconstruction adds to the supervised step: the data's targets are its clean
inputs, `dataset.corruption` corrupts the inputs the model sees (a denoising autoencoder),
and the reconstructions are shown in TensorBoard beside their inputs each epoch.

Corruption is seeded per sample: sample i of a split in epoch e gets the draw of a generator
seeded by (run seed, split, e) and i (data.sample_seeds), so it depends on nothing else (not
the batch size, the order, or what ran before) and a resumed epoch corrupts every sample as
the straight run did.
Validation and test corrupt with epoch 0's draw every time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from trainlab.metrics import Events
from trainlab.seeds import sample_seeds

CORRUPTION_STREAM = 0xC0
MASK_STREAM = 0xC2
SPLITS = {"train": 0, "val": 1, "test": 2}
SHOWN = 8  # validation samples shown each epoch


@dataclass(frozen=True)
class Corruption:
    """gaussian: x + N(0, std^2) per element; zero: each element set to 0 with probability
    rate (a masking noise)."""

    kind: str
    std: float
    rate: float
    seed: int
    split: int = 0

    @classmethod
    def from_config(cls, node: DictConfig | None, seed: int) -> Corruption | None:
        if node is None:  # (config.check checked the node's values)
            return None
        return cls(node.kind, float(node.get("std") or 0.0), float(node.get("rate") or 0.0), seed)

    def for_split(self, which: str) -> Corruption:
        return Corruption(self.kind, self.std, self.rate, self.seed, SPLITS[which])

    def __call__(self, x: Tensor, idx: Tensor, epoch: int) -> Tensor:
        """x (samples idx of the split, in this epoch) corrupted, each by its own draw."""
        epoch = epoch if self.split == SPLITS["train"] else 0
        draws, g = [], torch.Generator()
        for seed in sample_seeds(self.seed, (CORRUPTION_STREAM, self.split, epoch), idx):
            g.manual_seed(seed)
            if self.kind == "gaussian":
                draws.append(torch.randn(x.shape[1:], generator=g))
            else:
                draws.append(torch.rand(x.shape[1:], generator=g))
        draw = torch.stack(draws).to(x.device, x.dtype)
        if self.kind == "gaussian":
            return x + self.std * draw
        return x * (draw >= self.rate)


@dataclass(frozen=True)
class SampleSeeds:
    """For a model that draws per sample (takes_sample_seeds: a masked autoencoder's masks):
    the batch as {"x": x (after `then`, the corruption, if any), "seeds": one seed per sample
    from (run seed, epoch, sample index)}."""

    seed: int
    then: Any = None

    def __call__(self, x: Tensor, idx: Tensor, epoch: int) -> dict[str, Tensor]:
        seeds = torch.tensor(sample_seeds(self.seed, (MASK_STREAM, epoch), idx))
        return {"x": x if self.then is None else self.then(x, idx, epoch), "seeds": seeds}


@torch.no_grad()
def log_reconstructions(events: Events, model: nn.Module, batches: Any, step: int) -> None:
    """The first validation samples as the model sees them (corrupted or masked), its
    reconstructions and the clean targets, one row each: images as they are, signals as line
    plots."""
    from trainlab.adversarial import plot_signals

    x, clean = next(iter(batches.epoch(0)))
    x, clean = x[:SHOWN], clean[:SHOWN]
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        out = model(x)
    model.train(was_training)
    shown = x
    if isinstance(out, dict):  # a masked autoencoder: show its input with the hidden parts 0
        shown, out = x * (1 - out["mask"]), out["pred"]
    rows = [r.float().cpu() for r in (shown, out, clean)]
    if rows[0].dim() != 4:  # signals or vectors: line plots on one shared scale
        flat = plot_signals(torch.cat([r.flatten(1) for r in rows]))
        rows = list(flat.split(len(x)))
    low = min(r.amin() for r in rows)
    high = max(r.amax() for r in rows)
    grid = (torch.cat(rows) - low) / (high - low).clamp(min=1e-12)
    events.images("reconstructions/input_output_target", grid, step)
