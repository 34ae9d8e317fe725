"""Builders: each takes its own config node and returns the object the loop uses.

`_target_` dotpaths are the registry; keys that belong to trainlab rather than to the
constructor (a scheduler's `interval`) are taken off before instantiating.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from trainlab.errors import ConfigError, TrainlabError


def build_model(cfg: DictConfig) -> nn.Module:
    return instantiate_node(cfg, "model")


def build_optimizer(cfg: DictConfig, model: nn.Module) -> Optimizer:
    """The optimizer over the model's parameters: build it after the model is on its device."""
    return _call(instantiate_node(cfg, "optimizer"), "optimizer", model.parameters())


def build_scheduler(cfg: DictConfig, optimizer: Optimizer, total: int) -> LRScheduler | None:
    """The LR scheduler, or None. `total` is the run's length in scheduler intervals (epochs or
    steps, per cfg.interval); a `T_max: null` means one cosine over the whole run."""
    kwargs = _container(cfg)
    kwargs.pop("interval")
    if kwargs.get("_target_") is None:
        return None
    if "T_max" in kwargs and kwargs["T_max"] is None:
        kwargs["T_max"] = total
    return _call(instantiate_node(kwargs, "scheduler"), "scheduler", optimizer)


def build_loss(cfg: DictConfig) -> nn.Module:
    return instantiate_node(cfg, "loss")


def _container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _call(partial: Any, key: str, *args: Any) -> Any:
    """Call a `_partial_: true` node; its constructor's complaints name the config node."""
    try:
        return partial(*args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: cannot build it from the config: {e}") from e


def instantiate_node(cfg: DictConfig | dict[str, Any], key: str) -> Any:
    """hydra.utils.instantiate, with its errors as one line naming the config node."""
    try:
        return instantiate(cfg)
    except Exception as e:
        # Hydra wraps the constructor's own error (a TypeError naming the bad argument, or a
        # DataError from a dataset loader); show that, with the config node it came from.
        cause = e.__cause__ or e
        if isinstance(cause, TrainlabError):
            raise cause from None
        raise ConfigError(f"{key}: cannot build it from the config: {cause}") from e
