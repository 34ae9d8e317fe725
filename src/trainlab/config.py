"""The config schema (Hydra's ConfigStore) and check(cfg): the rules that no type can say.

Values live in conf/*.yaml; the dataclasses here carry only types (every field is MISSING),
so a typo or a wrong type fails when Hydra composes, and defaults live in one place.
No torch import: `trainlab train --help`, `--cfg job` and config errors stay fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from trainlab.errors import ConfigError


@dataclass
class EarlyStoppingConfig:
    patience: int | None = MISSING
    min_delta: float = MISSING


@dataclass
class CheckpointConfig:
    every_n_epochs: int = MISSING


@dataclass
class TrainerConfig:
    max_epochs: int = MISSING
    max_steps: int | None = MISSING
    batch_size: int = MISSING
    val_every_epochs: int = MISSING
    log_every_n_steps: int = MISSING
    grad_clip_norm: float | None = MISSING
    accelerator: str = MISSING
    deterministic: bool = MISSING
    num_threads: int | None = MISSING
    monitor: str = MISSING
    mode: str = MISSING
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass
class PathsConfig:
    output_dir: str = MISSING
    data_dir: str = MISSING


@dataclass
class TrainConfig:
    seed: int = MISSING
    name: str = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # The groups below differ per option; their YAML files are the schema, and Hydra's struct
    # mode still rejects unknown keys in them.
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    loss: Any = MISSING
    dataset: Any = MISSING


ConfigStore.instance().store(name="trainlab_schema", node=TrainConfig)

# The metrics each kind of task reports, for every split (train/, val/, test/).
TASK_METRICS = {"classification": ("loss", "acc")}

# `_target_` may only name these modules: a config.yaml read back for resume must not be able
# to call arbitrary code (os.system, torch.hub.load). Your own: export TRAINLAB_TARGETS=pkg,pkg2.
ALLOWED_TARGETS = (
    "trainlab.",
    "torch.nn.",
    "torch.optim.",
    "torchvision.models.",
    "torchvision.datasets.",
    "torchvision.transforms.",
)


def allowed_targets() -> tuple[str, ...]:
    extra = os.environ.get("TRAINLAB_TARGETS", "")
    return ALLOWED_TARGETS + tuple(
        f"{p.strip().rstrip('.')}." for p in extra.split(",") if p.strip()
    )


def check(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that breaks a rule; cheap, touches no files."""
    _check_targets(cfg)
    t = cfg.trainer
    _at_least(cfg, "seed", 0)
    _at_least(cfg, "trainer.max_epochs", 1)
    _at_least(cfg, "trainer.max_steps", 1, optional=True)
    _at_least(cfg, "trainer.batch_size", 1)
    _at_least(cfg, "trainer.val_every_epochs", 1)
    _at_least(cfg, "trainer.log_every_n_steps", 1)
    _at_least(cfg, "trainer.num_threads", 1, optional=True)
    _at_least(cfg, "trainer.early_stopping.patience", 1, optional=True)
    _at_least(cfg, "trainer.checkpoint.every_n_epochs", 1)
    _positive(cfg, "trainer.grad_clip_norm", optional=True)
    _at_least(cfg, "trainer.early_stopping.min_delta", 0.0)
    _one_of(cfg, "trainer.accelerator", ("auto", "cpu", "cuda"))
    _one_of(cfg, "trainer.mode", ("min", "max"))
    _one_of(cfg, "scheduler.interval", ("epoch", "step"))
    _one_of(cfg, "dataset.task", tuple(TASK_METRICS))

    split, _, metric = t.monitor.partition("/")
    metrics = TASK_METRICS[cfg.dataset.task]
    if split not in ("train", "val") or metric not in metrics:
        choices = ", ".join(f"{s}/{m}" for s in ("val", "train") for m in metrics)
        raise ConfigError(f"trainer.monitor={t.monitor}: must be one of {choices}")

    frac = cfg.dataset.val_fraction
    if not 0.0 < frac < 1.0:
        raise ConfigError(f"dataset.val_fraction={frac}: must be in (0, 1), e.g. 0.1")
    _positive(cfg, "optimizer.lr")
    smoothing = cfg.loss.get("label_smoothing")
    if smoothing is not None and not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"loss.label_smoothing={smoothing}: must be in [0, 1)")


def load_run_config(run_dir: Path) -> DictConfig:
    """The stored, resolved config of a run, typed by the schema: the source of truth on resume."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml here; is it a trainlab run folder?")
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(path))
    OmegaConf.set_struct(cfg, True)
    return cfg


def _check_targets(node: Any, path: str = "") -> None:
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if target is not None and not str(target).startswith(allowed_targets()):
            allowed = ", ".join(p.rstrip(".") for p in allowed_targets())
            raise ConfigError(
                f"{path}._target_={target}: not an allowed target; targets must be in {allowed}. "
                f"To use your own code: export TRAINLAB_TARGETS=<your package>"
            )
        for key in node:
            if key != "hydra":
                _check_targets(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            _check_targets(node._get_node(i), f"{path}[{i}]")


def _at_least(cfg: DictConfig, key: str, low: float, optional: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return
    if value is None or value < low:
        hint = " (or null)" if optional else ""
        raise ConfigError(f"{key}={value}: must be >= {low}{hint}")


def _positive(cfg: DictConfig, key: str, optional: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return
    if value is None or not math.isfinite(value) or value <= 0:
        hint = " (or null)" if optional else ""
        raise ConfigError(f"{key}={value}: must be a number > 0{hint}")


def _one_of(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise ConfigError(f"{key}={value}: must be one of {', '.join(choices)}")
