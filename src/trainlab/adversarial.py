"""What task=adversarial adds around its step (steps.adversarial_step): the extra state it
declares (the generator's optimizer and scheduler, the noise stream), its evaluation (the
discriminator's accuracy at telling held-out real samples from generated ones, and a Frechet
distance between the two), and the fixed-noise samples shown in TensorBoard each epoch.

The Frechet distance is computed on the raw samples, flattened (MNIST-1D's 40 points, the
digits' 64 pixels): FID's formula without an Inception network, which would need a download
and does not fit 8x8 digits or 1-D signals. It is 0 for identical distributions, and falls
as the generated samples' mean and covariance approach the real ones'."""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from trainlab import tasks
from trainlab.build import build_optimizer, build_scheduler
from trainlab.config import Interval, TrainerConfig, monitor_mode
from trainlab.data import epoch_seed
from trainlab.metrics import Events

# Tags that keep the noise streams apart from the (seed, epoch) data-order streams.
NOISE_STREAM = 0x6A4
EVAL_NOISE_SEED = 0x6A5  # the same noise at every validation (and test): comparable numbers
SAMPLE_NOISE_SEED = 0x6A6  # the samples shown each epoch: the same noise, so they can be compared
SAMPLES_SHOWN = 64


class NoiseStream:
    """The generator's noise: a CPU torch.Generator of its own, seeded from the run seed, so the
    draws are the same on any device and independent of dropout; its state is checkpointed."""

    def __init__(self, dim: int, kind: str, seed: int) -> None:
        self.dim, self.kind = dim, kind
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n: int, device: torch.device) -> Tensor:
        return draw(self.generator, n, self.dim, self.kind).to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def draw(generator: torch.Generator, n: int, dim: int, kind: str) -> Tensor:
    if kind == "uniform":
        return torch.rand(n, dim, generator=generator) * 2 - 1
    return torch.randn(n, dim, generator=generator)


def extra_state(cfg: DictConfig, trainer: TrainerConfig, parts: Any) -> dict[str, Any]:
    """The generator's optimizer (after the model is on its device) and optional scheduler,
    and the noise stream. The scheduler also joins parts.more_schedulers, stepped beside the
    discriminator's."""
    gan = parts.model
    optimizer_g = build_optimizer(cfg.optimizer_g, gan.generator, "optimizer_g")
    extra: dict[str, Any] = {"optimizer_g": optimizer_g}
    node = cfg.scheduler_g
    if node is not None and node.get("_target_") is not None:
        interval = Interval(node.interval)
        total = parts.run_length(trainer, interval)
        scheduler = build_scheduler(node, optimizer_g, total, monitor_mode(trainer), "scheduler_g")
        extra["scheduler_g"] = scheduler
        parts.more_schedulers.append((scheduler, interval))
    extra["noise"] = NoiseStream(gan.noise_dim, gan.noise, epoch_seed(cfg.seed, NOISE_STREAM))
    return extra


def scores(real: Tensor, fake: Tensor) -> dict[str, Tensor]:
    """One batch's per-sample results: the discriminator's probability of "real" (the
    sigmoid of its score) on real and on generated samples; g_loss is filled in by the step
    that trains the generator."""
    return {
        "d_real": torch.sigmoid(real.detach().float()).reshape(-1),
        "d_fake": torch.sigmoid(fake.detach().float()).reshape(-1),
        "g_loss": real.new_zeros(0, dtype=torch.float32),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Any, loss_fn: nn.Module, task: tasks.Task, split: str,
    precision: Any = None, confusion: Tensor | None = None,
) -> dict[str, float]:  # fmt: skip
    """D's loss, d_real, d_fake, d_acc and G's loss on the split's real samples against as many
    generated ones, from the same fixed noise every time; and the Frechet distance between the
    real and generated samples (raw, flattened)."""
    was_training = model.training
    model.eval()
    noise = torch.Generator().manual_seed(EVAL_NOISE_SEED)
    sums = tasks.new_sums(task, batches.device)
    real_rows, fake_rows = [], []
    for x, y in batches.epoch(0):
        z = draw(noise, len(x), model.noise_dim, model.noise).to(x.device)
        with (
            precision.autocast() if precision is not None else torch.autocast("cpu", enabled=False)
        ):
            fake = model.generator(z)
            real_score, fake_score = model.discriminator(x), model.discriminator(fake)
            loss = loss_fn.discriminator(real_score, fake_score)
        output = scores(real_score, fake_score)
        output["g_loss"] = loss_fn.generator_terms(fake_score).float().reshape(-1)
        tasks.accumulate(task, sums, loss, output, y)
        real_rows.append(x.flatten(1).double().cpu())
        fake_rows.append(fake.flatten(1).double().cpu())
    model.train(was_training)
    results = tasks.summarize(task, sums, split)
    if real_rows:
        results[f"{split}/fd"] = frechet_distance(torch.cat(real_rows), torch.cat(fake_rows))
    return results


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) between the Gaussians fitted
    to the rows of a and b (float64; symmetric eigendecompositions, no scipy)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    values, vectors = torch.linalg.eigh(s_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = root_a @ s_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * cross
    return max(float(value), 0.0) if math.isfinite(float(value)) else math.nan


@torch.no_grad()
def log_samples(events: Events, model: nn.Module, step: int) -> None:
    """The generator's samples from the same fixed noise, as images: image samples as they
    are (scaled to [0, 1]), 1-D signals drawn as line plots."""
    generator = model.generator
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    noise = torch.Generator().manual_seed(SAMPLE_NOISE_SEED)
    z = draw(noise, SAMPLES_SHOWN, model.noise_dim, model.noise).to(device)
    with torch.random.fork_rng(devices=[]):
        x = generator(z).float().cpu()
    generator.train(was_training)
    images = x if x.dim() == 4 else plot_signals(x.flatten(1))
    low, high = images.amin(), images.amax()
    events.images("samples/generated", (images - low) / (high - low).clamp(min=1e-12), step)


def plot_signals(x: Tensor, height: int = 32, stretch: int = 2) -> Tensor:
    """(N, L) signals as (N, 1, height, L * stretch) line plots: white where the line runs,
    one shared vertical scale, high values up."""
    low, high = x.amin(), x.amax()
    y = ((x - low) / (high - low).clamp(min=1e-12) * (height - 1)).round()
    y = y.repeat_interleave(stretch, 1)
    after = torch.cat([y[:, 1:], y[:, -1:]], 1)
    bottom, top = torch.minimum(y, after), torch.maximum(y, after)
    rows = torch.arange(height, dtype=y.dtype)[None, :, None]
    drawn = (rows >= bottom[:, None, :]) & (rows <= top[:, None, :])
    return drawn.flip(1).float()[:, None]
