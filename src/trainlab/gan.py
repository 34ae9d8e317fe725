"""The networks of task=adversarial: GAN, the pair the run trains (one nn.Module, so the
checkpoint's `model` holds both, and `model=gan` / `model=dcgan` pick both at once), and the
generators and the conv discriminator it is built from. A generator maps noise (N, noise_dim)
to samples of dataset.input_shape; a discriminator maps samples to one score each (N, 1), a
logit of "real"."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from trainlab.errors import ConfigError

NOISES = ("normal", "uniform")
OUTPUTS = {"none": nn.Identity, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class GAN(nn.Module):
    """A generator and a discriminator, and the noise the generator reads: `noise_dim` values
    per sample from `noise` (normal: N(0, 1); uniform: U(-1, 1)). forward is the
    discriminator's (what a tool that calls model(x) sees: a score per sample)."""

    def __init__(
        self, generator: nn.Module, discriminator: nn.Module, noise_dim: int, noise: str
    ) -> None:
        super().__init__()
        if noise not in NOISES:
            raise ConfigError(f"model.noise={noise}: must be one of {', '.join(NOISES)}")
        self.generator, self.discriminator = generator, discriminator
        self.noise_dim, self.noise = noise_dim, noise

    def forward(self, x: Tensor) -> Tensor:
        return self.discriminator(x)


class MLPGenerator(nn.Module):
    """Noise -> Linear + ReLU per hidden layer -> Linear -> output activation, reshaped to one
    sample's shape (signals or images)."""

    def __init__(
        self, noise_dim: int, hidden_sizes: Sequence[int], output_shape: Sequence[int],
        output_activation: str,
    ) -> None:  # fmt: skip
        super().__init__()
        self.output_shape = tuple(int(d) for d in output_shape)
        layers: list[nn.Module] = []
        width = noise_dim
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        numel = 1
        for d in self.output_shape:
            numel *= d
        layers += [nn.Linear(width, numel), _output(output_activation)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(len(z), *self.output_shape)


class DCGANGenerator(nn.Module):
    """DCGAN's generator (Radford et al., 2016) for square images: a linear layer to a small
    map, then per doubling of the side a 4x4 stride-2 transposed conv, batch norm and ReLU
    (the last one to the image's channels, then the output activation)."""

    def __init__(
        self, noise_dim: int, width: int, output_shape: Sequence[int], output_activation: str
    ) -> None:
        super().__init__()
        channels, side, doublings = _square_image(output_shape, "model.generator.output_shape")
        self.start = (width * 2**doublings, side)
        self.project = nn.Sequential(
            nn.Linear(noise_dim, self.start[0] * side * side, bias=False),
            nn.BatchNorm1d(self.start[0] * side * side),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        c = self.start[0]
        for i in range(doublings):
            last = i == doublings - 1
            out = channels if last else c // 2
            layers.append(nn.ConvTranspose2d(c, out, 4, stride=2, padding=1, bias=last))
            layers += [_output(output_activation)] if last else [nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        c, side = self.start
        return self.net(self.project(z).reshape(len(z), c, side, side))


class DCGANDiscriminator(nn.Module):
    """DCGAN's discriminator: per halving of the side a 4x4 stride-2 conv and LeakyReLU(0.2)
    (batch norm after all but the first), then a linear layer to one score."""

    def __init__(self, input_shape: Sequence[int], width: int) -> None:
        super().__init__()
        channels, side, halvings = _square_image(input_shape, "model.discriminator.input_shape")
        layers: list[nn.Module] = []
        c = channels
        for i in range(halvings):
            out = width * 2**i
            layers.append(nn.Conv2d(c, out, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2))
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * side * side, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def _square_image(shape: Sequence[int], key: str) -> tuple[int, int, int]:
    """(channels, the side after halving it while it is even and above 4, halvings)."""
    dims = [int(d) for d in shape]
    if len(dims) != 3 or dims[1] != dims[2] or dims[1] < 4:
        raise ConfigError(
            f"{key}={dims}: DCGAN's networks take square (channels, side, side) images with a "
            "side of at least 4; for signals or vectors use model=gan (MLPs)"
        )
    side, steps = dims[1], 0
    while side > 4 and side % 2 == 0:
        side, steps = side // 2, steps + 1
    if steps == 0:
        raise ConfigError(f"{key}={dims}: the side must be even, e.g. 8, 28 or 32")
    return dims[0], side, steps


def _output(name: str) -> nn.Module:
    if name not in OUTPUTS:
        raise ConfigError(
            f"model.generator.output_activation={name}: must be one of {', '.join(OUTPUTS)}"
        )
    return OUTPUTS[name]()
