"""What a dataset config says about its data, against the data itself: the shape keys
(input_shape, num_features, num_classes, num_outputs) read from the data where the config
leaves them null and checked where it pins them, and `standardize`: per-feature statistics of
the train split, applied to every split (and stored in run.json for eval and predict).

Filling a null key writes the value into the run's config node, so the model's interpolations
(`${dataset.num_features}`) and the stored config.yaml see what the data has."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from trainlab.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

SHAPE_KEYS = ("input_shape", "num_features", "num_classes", "num_outputs")
FROM_DATA = "or null to read it from the data"


def fill_from_data(cfg: DictConfig, shape: list[int], classes: list[str] | None, y: Any) -> None:
    """Set the shape keys the config leaves null from the data: the sample shape, its element
    count, the class count (where the loader names classes) and the outputs (the classes, or
    the width of a regression target)."""
    found: dict[str, Any] = {"input_shape": shape, "num_features": math.prod(shape)}
    if classes is not None:
        found["num_classes"] = len(classes)
    for key, value in found.items():
        if key in cfg and cfg[key] is None:
            cfg[key] = value
    if "num_outputs" in cfg and cfg.num_outputs is None:
        if cfg.task == "classification":
            cfg.num_outputs = cfg.get("num_classes")
        elif getattr(y, "ndim", None) == 2:  # a regression target: (N, outputs)
            cfg.num_outputs = int(y.shape[1])
    needed = ["input_shape", "num_features"]
    needed += {"classification": ["num_classes", "num_outputs"], "multitask": []}.get(
        cfg.task, ["num_outputs"]
    )  # (a multi-task dataset's outputs are its heads')
    missing = [k for k in needed if k in cfg and cfg[k] is None]
    if missing:
        raise ConfigError(
            f"dataset.{missing[0]}=null: it cannot be read from this data "
            f"({cfg._target_}); set it in the dataset's YAML"
        )


def check_classes(cfg: DictConfig, classes: list[str] | None) -> None:
    if classes is not None and len(classes) != cfg.num_classes:
        shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
        raise DataError(
            f"dataset.num_classes={cfg.num_classes}: the data has {len(classes)} classes "
            f"({shown}); set dataset.num_classes={len(classes)}, {FROM_DATA}"
        )


def check_shape(cfg: DictConfig, name: str, shape: list[int], after: str = "") -> None:
    if shape != list(cfg.input_shape):
        raise DataError(
            f"dataset.input_shape={list(cfg.input_shape)}: the {name} samples have shape "
            f"{shape}{after}; set dataset.input_shape={shape}, {FROM_DATA}"
        )
    if math.prod(shape) != cfg.num_features:
        raise DataError(
            f"dataset.num_features={cfg.num_features}: samples of shape {shape} have "
            f"{math.prod(shape)} elements; set dataset.num_features={math.prod(shape)}, "
            f"{FROM_DATA}"
        )


def from_the_run(stored: DictConfig, cfg: DictConfig) -> None:
    """A run continuing in its folder: the shape keys `cfg` leaves null mean what the run read
    from its data then (stored in its config.yaml), and set-up checks the data against them."""
    for key in SHAPE_KEYS:
        if key in cfg.dataset and cfg.dataset[key] is None:
            cfg.dataset[key] = stored.dataset.get(key)


def check_split(cfg: DictConfig, name: str, x: torch.Tensor, y: Any) -> None:
    from trainlab import fitting

    if len(x) == 0:
        raise DataError(f"dataset={cfg._target_}: the {name} split is empty")
    check_shape(cfg, name, list(x.shape[1:]))
    fitting.check_targets(cfg, name, y, "dataset")


# ---- standardize: true ----


def feature_stats(x: torch.Tensor) -> dict[str, list[float]]:
    """Per-feature mean and standard deviation (population) of the train split's inputs, in
    float64; a constant feature gets std 1 (it is centred, not blown up)."""
    flat = x.reshape(len(x), -1).double()
    std = flat.std(0, unbiased=False)
    std[std == 0] = 1.0
    return {"mean": flat.mean(0).tolist(), "std": std.tolist()}


def standardized(x: torch.Tensor, stats: dict[str, list[float]], key: str) -> torch.Tensor:
    """(x - mean) / std per feature, computed in float64 and returned as float32: the same
    numbers from stored statistics as from fresh ones."""
    mean, std = stats_tensors(stats, key)
    flat = x.reshape(len(x), -1)
    if flat.shape[1] != len(mean):
        raise DataError(
            f"{key}: {flat.shape[1]} features per sample, but the run's standardize "
            f"statistics (run.json data.standardize) have {len(mean)}"
        )
    return ((flat.double() - mean) / std).float().reshape(x.shape)


def stats_tensors(stats: Any, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored statistics as float64 (mean, std) tensors; a DataError naming `key` for anything
    that is not a mean and a positive std per feature (the file came from elsewhere)."""
    import torch

    try:
        mean = torch.tensor(stats["mean"], dtype=torch.float64)
        std = torch.tensor(stats["std"], dtype=torch.float64)
        usable = mean.dim() == 1 and mean.shape == std.shape and bool((std > 0).all())
    except (KeyError, TypeError, ValueError, RuntimeError):
        usable = False
    if not usable or not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()):
        raise DataError(
            f"{key}: the run's standardize statistics (run.json data.standardize) are not a "
            "mean and a positive std per feature; the file is not what the run wrote"
        )
    return mean, std
