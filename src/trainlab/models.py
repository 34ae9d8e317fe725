"""Reference models, each an nn.Module built from its own config node (conf/model/*.yaml)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

from torch import Tensor, nn

Activation = Callable[[], nn.Module]


class MLP(nn.Module):
    """Flatten, then Linear + activation (+ dropout) per hidden layer, then a linear head."""

    def __init__(
        self,
        num_features: int,
        hidden_sizes: list[int],
        num_classes: int,
        activation: Activation,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = num_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), activation()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvBase(nn.Module):
    """The MNIST-1D paper's ConvBase: each sample is read as one channel of input_length points."""

    def __init__(
        self, input_length: int, channels: int, num_classes: int, activation: Activation
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
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = x.reshape(x.shape[0], 1, self.input_length)
        h = self.act1(self.conv1(h))
        h = self.act2(self.conv2(h))
        h = self.act3(self.conv3(h))
        return self.linear(h.flatten(1))


def sequential(layers: Mapping[str, nn.Module]) -> nn.Sequential:
    """nn.Sequential from a name -> layer mapping, keeping the names (fc1.weight, ...)."""
    return nn.Sequential(OrderedDict((str(name), layer) for name, layer in layers.items()))
