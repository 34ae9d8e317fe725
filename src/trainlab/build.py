"""Builders: each takes its own config node and returns the object the loop uses.

`_target_` dotpaths are the registry; keys that belong to trainlab rather than to the
constructor (a scheduler's `interval`, an optimizer's `param_groups`) are taken off first.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from trainlab.errors import ConfigError, TrainlabError

# Optimizer-node keys that are trainlab's, not the constructor's.
OPTIMIZER_KEYS = ("param_groups", "eval_with_average")
# A scheduler argument left null that means "the whole run", filled with the run's length.
RUN_LENGTH_KEYS = ("T_max", "total_steps")
# Loss arguments torch wants as tensors; YAML gives lists.
TENSOR_KEYS = ("weight", "pos_weight")


def build_model(cfg: DictConfig) -> nn.Module:
    return instantiate_node(cfg, "model")


def build_optimizer(cfg: DictConfig, model: nn.Module, key: str = "optimizer") -> Optimizer:
    """The optimizer over the model's parameters: build it after the model is on its device.

    `param_groups` entries pick parameters by name pattern (fnmatch on names such as
    `fc1.weight`) and override options for them; the first matching entry wins; parameters
    no entry matches form the first group, with the optimizer's own options.
    """
    kwargs = _container(cfg)
    group_specs = kwargs.pop("param_groups")
    for own in OPTIMIZER_KEYS:
        kwargs.pop(own, None)
    make = instantiate_node(kwargs, key)
    params = param_groups(model, group_specs, _option_names(kwargs["_target_"]), key)
    return _call(make, key, params)


def param_groups(
    model: nn.Module, specs: list[dict[str, Any]], options: set[str], key: str = "optimizer"
) -> list[dict[str, Any]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not specs:
        return [{"params": [p for _, p in named]}]
    groups: list[dict[str, Any]] = [{"params": []}]
    groups += [{**{k: v for k, v in spec.items() if k != "match"}, "params": []} for spec in specs]
    for i, spec in enumerate(specs):
        unknown = set(spec) - options - {"match"}
        if unknown:
            raise ConfigError(
                f"{key}.param_groups[{i}].{sorted(unknown)[0]}: not an option of this "
                f"optimizer; options: {', '.join(sorted(options))}"
            )
    for name, param in named:
        hit = next((i for i, s in enumerate(specs) if fnmatch.fnmatchcase(name, s["match"])), None)
        groups[0 if hit is None else hit + 1]["params"].append(param)
    for i, (spec, group) in enumerate(zip(specs, groups[1:], strict=True)):
        if not group["params"]:
            names = ", ".join(n for n, _ in named[:6])
            raise ConfigError(
                f"{key}.param_groups[{i}].match={spec['match']}: matches no parameter (or "
                f"only ones an earlier entry took); parameters are named like {names} ..."
            )
    return [g for g in groups if g["params"]]


def build_scheduler(
    cfg: DictConfig, optimizer: Optimizer, total: int, mode: str, key: str = "scheduler"
) -> LRScheduler | None:
    """The LR scheduler, or None. `total` is the run's length in scheduler intervals (epochs or
    steps, per cfg.interval): a null T_max or total_steps means the whole run. `mode` (min or
    max, the monitored metric's direction) fills a null `mode` (plateau)."""
    kwargs = _container(cfg)
    kwargs.pop("interval")
    if kwargs.get("_target_") is None:
        return None
    for key in RUN_LENGTH_KEYS:
        if key in kwargs and kwargs[key] is None:
            kwargs[key] = total
    if "mode" in kwargs and kwargs["mode"] is None:
        kwargs["mode"] = mode
    return _call(instantiate_node(kwargs, key), key, optimizer)


def build_loss(cfg: DictConfig | dict[str, Any], key: str = "loss") -> nn.Module:
    """The loss module; list-valued weight/pos_weight become tensors, and a multi-task loss's
    named losses are built the same way."""
    kwargs = cfg if isinstance(cfg, dict) else _container(cfg)
    kwargs = dict(kwargs)
    built: dict[str, Any] = {}
    for name in TENSOR_KEYS:
        if isinstance(kwargs.get(name), list):
            built[name] = torch.tensor(kwargs.pop(name), dtype=torch.float32)
    if isinstance(kwargs.get("losses"), dict):
        losses = kwargs.pop("losses")
        built["losses"] = {n: build_loss(sub, f"{key}.losses.{n}") for n, sub in losses.items()}
    return instantiate_node(kwargs, key, **built)


def instantiate_node(cfg: DictConfig | dict[str, Any], key: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with its errors as one line naming the config node. Arguments
    arrive as plain lists and dicts (_convert_=all): an optimizer keeps its `betas` in its
    state, and a checkpoint must hold plain containers only."""
    try:
        return instantiate(cfg, _convert_="all", **kwargs)
    except Exception as e:
        # Hydra wraps the constructor's own error (a TypeError naming the bad argument, or a
        # DataError from a dataset loader); show that, with the config node it came from.
        cause = e.__cause__ or e
        if isinstance(cause, TrainlabError):
            raise cause from None
        target = cfg["_target_"]  # a node without one builds nothing, so never fails here
        raise ConfigError(
            _unexpected_key(key, target, cause)
            or f"{key}: cannot build it from the config: {cause}"
        ) from e


def _unexpected_key(key: str, target: str, error: BaseException) -> str | None:
    """`model.foo: unknown key ...` for a constructor's unexpected keyword argument."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if found is None or not target:
        return None
    try:
        names = sorted(_option_names(target))
    except Exception:
        return None
    near = difflib.get_close_matches(found.group(1), names, n=1)
    hint = f"did you mean {key}.{near[0]}?" if near else f"{target} takes: {', '.join(names)}"
    return f"{key}.{found.group(1)}: unknown key; {hint}"


def _option_names(target: str) -> set[str]:
    params = inspect.signature(get_class(target)).parameters
    return {name for name in params if name not in ("self", "params")}


def _call(partial: Any, key: str, *args: Any) -> Any:
    """Call a `_partial_: true` node; its constructor's complaints name the config node."""
    try:
        return partial(*args)
    except (TypeError, ValueError) as e:
        target = getattr(partial, "func", None)
        name = f"{target.__module__}.{target.__qualname__}" if target is not None else ""
        message = _unexpected_key(key, name, e)
        raise ConfigError(message or f"{key}: cannot build it from the config: {e}") from e


def _container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
