"""Reference models, each an nn.Module built from its own config node (conf/model/*.yaml).

Every model takes `num_outputs` (the width of its last layer, from the dataset) and, where it
has hidden activations, an `activation` factory (`_partial_: true`), called once per layer so
learnable activations (PReLU) get parameters of their own.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.errors import ConfigError

Activation = Callable[[], nn.Module]


class MLP(nn.Module):
    """Flatten, then Linear + activation (+ dropout) per hidden layer, then a linear head.
    No hidden layers is logistic/linear regression. `residual` adds each hidden layer's input to
    its output where the widths match (the MNIST-1D paper's MLP does so for its second layer)."""

    def __init__(
        self,
        num_features: int,
        hidden_sizes: Sequence[int],
        num_outputs: int,
        activation: Activation,
        dropout: float,
        residual: bool,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.hidden = nn.ModuleList()
        width = num_features
        for size in hidden_sizes:
            block = [nn.Linear(width, size), activation()]
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            self.hidden.append(nn.Sequential(*block))
            width = size
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for block in self.hidden:
            out = block(h)
            h = h + out if self.residual and out.shape == h.shape else out
        return self.head(h)


class ConvBase(nn.Module):
    """The MNIST-1D paper's ConvBase: each sample is read as one channel of input_length points."""

    def __init__(
        self, input_length: int, channels: int, num_outputs: int, activation: Activation
    ) -> None:
        super().__init__()
        self.input_length = input_length
        self.conv1 = nn.Conv1d(1, channels, kernel_size=5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.act1, self.act2, self.act3 = activation(), activation(), activation()
        length = input_length
        for conv in (self.conv1, self.conv2, self.conv3):
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            length = (length + 2 * p - k) // s + 1
        self.linear = nn.Linear(channels * length, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        h = x.reshape(x.shape[0], 1, self.input_length)
        h = self.act1(self.conv1(h))
        h = self.act2(self.conv2(h))
        h = self.act3(self.conv3(h))
        return self.linear(h.flatten(1))


class CNN(nn.Module):
    """2-D conv blocks (conv 'same' + optional batch norm + activation + 2x2 max pool), global
    average pooling, dropout, linear head: a plain image classifier for (C, H, W) inputs."""

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int],
        kernel_size: int,
        batch_norm: bool,
        dropout: float,
        num_outputs: int,
        activation: Activation,
    ) -> None:
        super().__init__()
        _need_image(input_shape, "cnn")
        layers: list[nn.Module] = []
        width = input_shape[0]
        for out in channels:
            layers.append(nn.Conv2d(width, out, kernel_size, padding=kernel_size // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers += [activation(), nn.MaxPool2d(2, ceil_mode=True)]
            width = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998): conv 6@5x5 (padded to keep 28x28) - pool - conv 16@5x5 -
    pool - 120 - 84 - outputs. `pool: avg` with Tanh is the original; max with ReLU the modern."""

    def __init__(
        self, input_shape: Sequence[int], num_outputs: int, activation: Activation, pool: str
    ) -> None:
        super().__init__()
        _need_image(input_shape, "lenet")
        if pool not in ("avg", "max"):
            raise ConfigError(f"model.pool={pool}: must be avg or max")
        pooling = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 6, 5, padding=2), activation(), pooling(2),
            nn.Conv2d(6, 16, 5), activation(), pooling(2), nn.Flatten(),
        )  # fmt: skip
        flat = _flat_size(self.features, input_shape, "lenet", "needs at least 12x12 inputs")
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), activation(), nn.Linear(120, 84), activation(),
            nn.Linear(84, num_outputs),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class GRUClassifier(nn.Module):
    """The MNIST-1D paper's GRUBase: a (bi)GRU over time_steps steps of input_size features,
    then a linear layer over every step's hidden state (readout all) or the last one (last)."""

    def __init__(
        self,
        time_steps: int,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
        readout: str,
        num_outputs: int,
    ) -> None:
        super().__init__()
        if readout not in ("all", "last"):
            raise ConfigError(f"model.readout={readout}: must be all or last")
        self.time_steps, self.input_size, self.readout = time_steps, input_size, readout
        self.gru = nn.GRU(
            input_size, hidden_size, num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional,
        )  # fmt: skip
        width = hidden_size * (2 if bidirectional else 1)
        self.linear = nn.Linear(width * (time_steps if readout == "all" else 1), num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        seq = x.reshape(x.shape[0], self.time_steps, self.input_size)
        out, _ = self.gru(seq)  # zero initial state, as in the paper
        return self.linear(out.flatten(1) if self.readout == "all" else out[:, -1])


class ResNet9(nn.Module):
    """The fast CIFAR-10 ResNet-9 (Page, 2018; Keller Jordan's airbench family): prep conv, then
    three stages (conv-pool, with a residual pair after the first and last), max-pool, linear.
    `width` is the first stage's channels (the stages use width x 2, 4, 8)."""

    def __init__(self, input_shape: Sequence[int], width: int, num_outputs: int) -> None:
        super().__init__()
        _need_image(input_shape, "resnet9")
        w = width

        def block(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
            layers = [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
            return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

        self.prep = block(input_shape[0], w)
        self.layer1 = block(w, 2 * w, pool=True)
        self.res1 = nn.Sequential(block(2 * w, 2 * w), block(2 * w, 2 * w))
        self.layer2 = block(2 * w, 4 * w, pool=True)
        self.layer3 = block(4 * w, 8 * w, pool=True)
        self.res3 = nn.Sequential(block(8 * w, 8 * w), block(8 * w, 8 * w))
        self.head = nn.Sequential(
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_outputs)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer1(self.prep(x))
        h = h + self.res1(h)
        h = self.layer3(self.layer2(h))
        h = h + self.res3(h)
        return self.head(h)


def sequential(layers: Mapping[str, nn.Module]) -> nn.Sequential:
    """nn.Sequential from a name -> layer mapping, keeping the names (fc1.weight, ...)."""
    return nn.Sequential(OrderedDict((str(name), layer) for name, layer in layers.items()))


def torchvision_model(
    name: str, num_classes: int, weights: str | None, input_shape: Sequence[int]
) -> nn.Module:
    """Any torchvision classification model by name, with a fresh head of num_classes. A
    one-channel input is repeated to the three channels these models expect."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        examples = ", ".join(available[:8])
        raise ConfigError(f"model.name={name}: not a torchvision classifier; e.g. {examples} ...")
    try:
        model = torchvision.models.get_model(name, weights=weights, num_classes=num_classes)
    except Exception as e:
        raise ConfigError(f"model.weights={weights}: {e}".splitlines()[0]) from e
    if input_shape[0] == 3:
        return model
    if input_shape[0] == 1:
        return nn.Sequential(OrderedDict(gray_to_rgb=RepeatChannels(3), net=model))
    raise ConfigError(
        f"dataset.input_shape={list(input_shape)}: torchvision models take 1 or 3 channels"
    )


class RepeatChannels(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return x.expand(-1, self.channels, *x.shape[2:])


class MultiHead(nn.Module):
    """A shared MLP trunk and one linear head per named output: returns {head: tensor}."""

    def __init__(
        self,
        num_features: int,
        hidden_sizes: Sequence[int],
        heads: Mapping[str, Any],
        activation: Activation,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = num_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), activation()]
            width = size
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(width, spec["num_outputs"]) for name, spec in heads.items()}
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {name: head(h) for name, head in self.heads.items()}


def _need_image(input_shape: Sequence[int], model: str) -> None:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model={model} takes (channels, height, width) images, but dataset.input_shape="
            f"{list(input_shape)}; use model=mlp, cnn1d or gru for such data"
        )


def _flat_size(features: nn.Module, input_shape: Sequence[int], model: str, hint: str) -> int:
    """Width after `features`, from a forward pass of zeros (draws no random numbers)."""
    try:
        with torch.no_grad():
            return math.prod(features(torch.zeros(1, *input_shape)).shape[1:])
    except RuntimeError as e:
        raise ConfigError(
            f"model={model}: dataset.input_shape={list(input_shape)} is too small ({hint})"
        ) from e
