"""The model of task=contrastive: an encoder (any model; its outputs are the features the
k-NN evaluation reads) and a projection head (what the contrastive loss compares), as in
SimCLR (Chen et al., 2020): the loss is computed after the projection, the features are
taken before it."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class Embedder(nn.Module):
    """forward(x): two views (N, 2, *input_shape) -> their projections (N, 2, projection_dim);
    samples (N, *input_shape) -> the encoder's features (N, features)."""

    def __init__(
        self, encoder: nn.Module, input_shape: Sequence[int], features: int, hidden: int,
        projection_dim: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.encoder, self.sample_dims = encoder, len(input_shape)
        self.projection = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, projection_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == self.sample_dims + 2:  # two views of each sample
            n = len(x)
            return self.projection(self.encoder(x.flatten(0, 1))).reshape(n, 2, -1)
        return self.encoder(x)
