"""The models of task=reconstruction: each maps a sample to a reconstruction of the same
shape (the target is the clean input). An MLP autoencoder, a 2-D conv one, and a masked
autoencoder (He et al., 2022) that patchifies its input, hides `mask_ratio` of the patches,
encodes the visible ones, reconstructs every patch and says which were hidden (the loss,
losses.MaskedMSELoss, counts only those)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trainlab.errors import ConfigError
from trainlab.gan import OUTPUTS

EVAL_MASK_SEED = 0x3A5  # evaluation hides the same patches every time: comparable numbers


class Autoencoder(nn.Module):
    """Flatten -> Linear + ReLU per hidden layer -> the `bottleneck` code -> the hidden layers
    mirrored -> Linear -> output activation, reshaped to the input's shape."""

    def __init__(
        self, input_shape: Sequence[int], hidden_sizes: Sequence[int], bottleneck: int,
        output_activation: str,
    ) -> None:  # fmt: skip
        super().__init__()
        self.shape = tuple(int(d) for d in input_shape)
        numel = math.prod(self.shape)
        widths = [numel, *hidden_sizes, bottleneck]
        self.encoder = _mlp(widths, last_act=True)
        self.decoder = nn.Sequential(_mlp(widths[::-1], last_act=False), _output(output_activation))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x.flatten(1))).reshape(len(x), *self.shape)


class ConvAutoencoder(nn.Module):
    """Images: per entry of `channels` a 3x3 stride-2 conv + ReLU down, then 4x4 stride-2
    transposed convs back up, to the input's channels and the output activation."""

    def __init__(
        self, input_shape: Sequence[int], channels: Sequence[int], output_activation: str
    ) -> None:
        super().__init__()
        c, h, w = _image(input_shape, "model.input_shape")
        if h % 2 ** len(channels) or w % 2 ** len(channels):
            raise ConfigError(
                f"model.channels={list(channels)}: {len(channels)} halvings need a height and "
                f"width divisible by {2 ** len(channels)}, but the images are {h}x{w}"
            )
        down: list[nn.Module] = []
        width = c
        for out in channels:
            down += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.ReLU()]
            width = out
        up: list[nn.Module] = []
        for i, out in enumerate([*channels[::-1][1:], c]):
            up.append(nn.ConvTranspose2d(width, out, 4, stride=2, padding=1))
            up.append(nn.ReLU() if i < len(channels) - 1 else _output(output_activation))
            width = out
        self.encoder, self.decoder = nn.Sequential(*down), nn.Sequential(*up)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class MaskedAutoencoder(nn.Module):
    """A small MAE for 1-D signals (L) or images (C, H, W): patches of patch_size points (or
    patch_size x patch_size pixels) are embedded with learnt positions; in training a fresh
    random `mask_ratio` of them per sample is hidden, the transformer encoder sees the visible
    ones, and a lighter decoder, given a shared mask token at each hidden position, predicts
    every patch. Returns {"pred": the reconstruction, shaped like x; "mask": 1 where hidden}.

    The masks are drawn per sample: the training batches come as {"x": x, "seeds": one seed
    per sample} (takes_sample_seeds: parts.py asks the data for them; the seeds come from
    (run seed, epoch, sample index), reconstruction.SampleSeeds), so a sample's mask depends
    on nothing else and a resumed epoch hides what the straight run hid. Evaluation (and a
    plain tensor in eval mode) hides a fixed draw; a plain tensor in training draws from
    torch's random stream, as dropout does."""

    takes_sample_seeds = True

    def __init__(
        self, input_shape: Sequence[int], patch_size: int, mask_ratio: float, dim: int,
        depth: int, heads: int, decoder_dim: int, decoder_depth: int, output_activation: str,
    ) -> None:  # fmt: skip
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio={mask_ratio}: must be in (0, 1), e.g. 0.75")
        self.shape = tuple(int(d) for d in input_shape)
        self.patch_size, self.mask_ratio = patch_size, mask_ratio
        self.grid = _patch_grid(self.shape, patch_size)
        self.num_patches = math.prod(self.grid)
        self.keep = max(1, round(self.num_patches * (1 - mask_ratio)))
        patch_numel = math.prod(self.shape) // self.num_patches
        self.embed = nn.Linear(patch_numel, dim)
        self.pos = nn.Parameter(torch.randn(1, self.num_patches, dim) * 0.02)
        self.encoder = _transformer(dim, depth, heads)
        self.to_decoder = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.randn(1, self.num_patches, decoder_dim) * 0.02)
        self.decoder = _transformer(decoder_dim, decoder_depth, max(1, heads // 2))
        self.head = nn.Linear(decoder_dim, patch_numel)
        self.out = _output(output_activation)

    def forward(self, x: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
        seeds = None
        if isinstance(x, dict):
            x, seeds = x["x"], x["seeds"]
        patches = self.patchify(x)  # (N, P, patch_numel)
        n, p, _ = patches.shape
        order = self._order(n, x.device, seeds)  # per sample: kept patches first
        kept = order[:, : self.keep]
        tokens = self.embed(patches) + self.pos
        visible = torch.gather(tokens, 1, kept[..., None].expand(-1, -1, tokens.shape[-1]))
        encoded = self.to_decoder(self.encoder(visible))
        full = self.mask_token.expand(n, p, -1).clone()
        full.scatter_(1, kept[..., None].expand(-1, -1, full.shape[-1]), encoded)
        pred = self.out(self.head(self.decoder(full + self.decoder_pos)))
        hidden = torch.ones(n, p, device=x.device)
        hidden.scatter_(1, kept, 0.0)
        mask = hidden[..., None].expand_as(patches)
        return {"pred": self.unpatchify(pred), "mask": self.unpatchify(mask)}

    def _order(self, n: int, device: torch.device, seeds: Tensor | None) -> Tensor:
        """A random permutation of the patches per sample (MAE's argsort of uniform noise)."""
        if self.training and seeds is not None:
            g = torch.Generator()
            rows = [torch.rand(self.num_patches, generator=g.manual_seed(int(s))) for s in seeds]
            noise = torch.stack(rows).to(device)
        elif self.training:
            noise = torch.rand(n, self.num_patches, device=device)
        else:
            fixed = torch.Generator().manual_seed(EVAL_MASK_SEED)
            noise = torch.rand(n, self.num_patches, generator=fixed).to(device)
        return noise.argsort(dim=1)

    def patchify(self, x: Tensor) -> Tensor:
        s, n = self.patch_size, len(x)
        if len(self.shape) == 1:
            return x.reshape(n, self.grid[0], s)
        c, (gh, gw) = self.shape[0], self.grid
        x = x.reshape(n, c, gh, s, gw, s).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, gh * gw, c * s * s)

    def unpatchify(self, patches: Tensor) -> Tensor:
        s, n = self.patch_size, len(patches)
        if len(self.shape) == 1:
            return patches.reshape(n, *self.shape)
        c, (gh, gw) = self.shape[0], self.grid
        x = patches.reshape(n, gh, gw, c, s, s).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, *self.shape)


def _patch_grid(shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    sides = shape[:1] if len(shape) == 1 else shape[1:]
    if len(shape) not in (1, 3) or any(side % size for side in sides):
        raise ConfigError(
            f"model.patch_size={size}: must divide the sides of dataset.input_shape="
            f"{list(shape)} (a signal of length L or a (channels, height, width) image)"
        )
    return tuple(side // size for side in sides)


def _transformer(dim: int, depth: int, heads: int) -> nn.Module:
    if dim % heads:
        raise ConfigError(f"model.heads={heads}: must divide the token width {dim}")
    layer = nn.TransformerEncoderLayer(
        dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def _mlp(widths: Sequence[int], last_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or last_act:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _image(shape: Sequence[int], key: str) -> tuple[int, int, int]:
    dims = [int(d) for d in shape]
    if len(dims) != 3:
        raise ConfigError(
            f"{key}={dims}: a conv autoencoder takes (channels, height, width) images; for "
            "signals or vectors use model=autoencoder"
        )
    return dims[0], dims[1], dims[2]


def _output(name: str) -> nn.Module:
    if name not in OUTPUTS:
        raise ConfigError(f"model.output_activation={name}: must be one of {', '.join(OUTPUTS)}")
    return OUTPUTS[name]()
