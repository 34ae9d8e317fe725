"""The config schema (Hydra's ConfigStore) and check(cfg): the rules that no type can say.

Values live in conf/*.yaml; the dataclasses here carry only types (every field is MISSING),
so a typo or a wrong type fails when Hydra composes, and defaults live in one place.
No torch import: `trainlab train --help`, `--cfg job` and config errors stay fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from trainlab import catalogue, targets
from trainlab.errors import ConfigError

# The config groups: trainlab/conf/ in an installed wheel (setup.py copies the checkout's
# conf/ there when it builds), the checkout's conf/ itself in an editable install.
_PACKAGED = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2] / "conf"


class Choice(str, Enum):
    """A config value from a fixed set: compares equal to its YAML text, prints as it."""

    def __str__(self) -> str:
        return self.value


Precision = Choice("Precision", {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"})
NanPolicy = Choice("NanPolicy", {"stop": "stop", "skip": "skip"})
OnError = Choice("OnError", {"stop": "stop", "continue": "continue"})
ResumeMode = Choice("ResumeMode", {"never": "never", "auto": "auto"})
ProgressMode = Choice("ProgressMode", {k: k for k in ("auto", "bar", "lines", "none")})
# Checked by check() rather than typed, so its message names the key: the scheduler node is
# its option's own YAML, and mode and accelerator errors read as the other rule errors do.
Interval = Choice("Interval", {"epoch": "epoch", "step": "step"})
Mode = Choice("Mode", {"auto": "auto", "min": "min", "max": "max"})
Accelerator = Choice("Accelerator", {k: k for k in ("auto", "cpu", "cuda", "mps")})


@dataclass
class EarlyStoppingConfig:
    patience: int | None = MISSING
    min_delta: float = MISSING


@dataclass
class CheckpointConfig:
    every_n_epochs: int | None = MISSING
    every_n_steps: int | None = MISSING
    keep_last: int = MISSING
    top_k: int = MISSING
    on_error: OnError = MISSING


@dataclass
class TensorBoardConfig:
    graph: bool = MISSING
    example_images: int = MISSING
    histograms_every_n_epochs: int | None = MISSING
    confusion_matrix: bool = MISSING


@dataclass
class TrainerConfig:
    max_epochs: int = MISSING
    max_steps: int | None = MISSING
    batch_size: int = MISSING
    accumulate_grad_batches: int = MISSING
    val_every_epochs: int = MISSING
    log_every_n_steps: int = MISSING
    grad_clip_norm: float | None = MISSING
    accelerator: str = MISSING
    devices: int = MISSING
    deterministic: bool = MISSING
    num_threads: int | None = MISSING
    monitor: str = MISSING
    mode: str = MISSING
    precision: Precision = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    tf32: bool = MISSING
    step: str | None = MISSING
    d_steps_per_g_step: int = MISSING
    knn_k: int = MISSING
    nan_policy: NanPolicy = MISSING
    nan_skip_limit: int = MISSING
    resume: ResumeMode = MISSING
    progress: ProgressMode = MISSING
    # Debugging switches: a count of batches (int) or a fraction of them (float), or null.
    fast_dev_run: bool = MISSING
    limit_train_batches: Any = MISSING
    limit_val_batches: Any = MISSING
    overfit_batches: Any = MISSING
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def batches_per_step(self) -> int:
        """Batches each call of the step trains on: accumulated ones (supervised), or the
        discriminator's before each generator step (adversarial); check() keeps the other 1."""
        return self.accumulate_grad_batches * self.d_steps_per_g_step


@dataclass
class PathsConfig:
    output_dir: str = MISSING
    data_dir: str = MISSING


@dataclass
class TrainConfig:
    seed: int = MISSING
    name: str = MISSING
    task: str = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # The groups below differ per option; their YAML files are the schema, and Hydra's struct
    # mode still rejects unknown keys in them.
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    loss: Any = MISSING
    dataset: Any = MISSING
    # task=adversarial only: the generator's optimizer and scheduler (model, optimizer and
    # scheduler are the discriminator's and the pair's); null in every other run.
    optimizer_g: Any = None
    scheduler_g: Any = None


ConfigStore.instance().store(name="trainlab_schema", node=TrainConfig)


def monitor_mode(trainer: DictConfig) -> str:
    """min or max for trainer.monitor; `auto` follows the metric (loss, rmse, mae: min)."""
    if trainer.mode != "auto":
        return trainer.mode
    return metric_mode(trainer.monitor)


def metric_mode(name: str) -> str:
    """min or max for a metric by its name: val/loss, val/rmse, test/mae: min; the rest max."""
    metric = name.rpartition("/")[2].rpartition("_")[2]
    return "min" if metric in catalogue.LOWER_IS_BETTER else "max"


def check(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that breaks a rule; cheap, touches no files."""
    _check_known_keys(cfg, TrainConfig, "")
    check_name(cfg.name)
    at_least(cfg, "seed", 0)
    at_least(cfg, "trainer.max_epochs", 1)
    at_least(cfg, "trainer.max_steps", 1, optional=True)
    at_least(cfg, "trainer.batch_size", 1)
    at_least(cfg, "trainer.accumulate_grad_batches", 1)
    at_least(cfg, "trainer.val_every_epochs", 1)
    at_least(cfg, "trainer.log_every_n_steps", 1)
    at_least(cfg, "trainer.num_threads", 1, optional=True)
    at_least(cfg, "trainer.early_stopping.patience", 1, optional=True)
    at_least(cfg, "trainer.checkpoint.every_n_epochs", 1, optional=True)
    at_least(cfg, "trainer.checkpoint.every_n_steps", 1, optional=True)
    at_least(cfg, "trainer.checkpoint.top_k", 1)
    at_least(cfg, "trainer.nan_skip_limit", 0)
    keep = cfg.trainer.checkpoint.keep_last
    if keep < 2:
        raise ConfigError(
            f"trainer.checkpoint.keep_last={keep}: must be >= 2, so a corrupt newest checkpoint "
            "always has an older one to fall back to"
        )
    shape = cfg.dataset.get("input_shape")  # null: read from the data (dataspec.py)
    if cfg.trainer.channels_last and shape is not None and len(shape) != 3:
        raise ConfigError(
            f"trainer.channels_last=true: it lays out (channels, height, width) images, but "
            f"dataset.input_shape={list(cfg.dataset.input_shape)}; set trainer.channels_last=false"
        )
    for key in ("limit_train_batches", "limit_val_batches", "overfit_batches"):
        _check_batch_count(cfg, f"trainer.{key}")
    t = cfg.trainer
    if (
        t.overfit_batches is not None
        and (t.limit_train_batches, t.limit_val_batches) != (None,) * 2
    ):
        raise ConfigError(
            f"trainer.overfit_batches={t.overfit_batches}: it sets which batches train and "
            "validate, so trainer.limit_train_batches and limit_val_batches must be null"
        )
    at_least(cfg, "trainer.tensorboard.example_images", 0)
    at_least(cfg, "trainer.tensorboard.histograms_every_n_epochs", 1, optional=True)
    positive(cfg, "trainer.grad_clip_norm", optional=True)
    at_least(cfg, "trainer.early_stopping.min_delta", 0.0)
    one_of(cfg, "trainer.accelerator", Accelerator)
    _check_devices(cfg)
    one_of(cfg, "trainer.mode", Mode)
    one_of(cfg, "scheduler.interval", Interval)
    one_of(cfg, "dataset.task", catalogue.DATASET_TASKS)
    frac = cfg.dataset.val_fraction
    if not 0.0 < frac < 1.0:
        raise ConfigError(f"dataset.val_fraction={frac}: must be in (0, 1), e.g. 0.1")
    from trainlab import shapes  # (it uses this module's rules)

    shapes.check(cfg)
    _check_monitor(cfg)
    for prefix in ("optimizer", "optimizer_g") if cfg.task == "adversarial" else ("optimizer",):
        positive(cfg, f"{prefix}.lr")
        _check_optimizer(cfg, prefix)
    _check_scheduler(cfg)
    catalogue.check_loss(cfg.loss, cfg.dataset, "loss", cfg.task)
    # Last: resolving a target imports its package (torch), so the rules above answer first.
    targets.check(cfg)
    if cfg.trainer.step is not None:  # a dotpath like a `_target_`, checked the same way
        from trainlab import steps

        steps.resolve(cfg)


NAME_MAX = 100  # characters; the folder adds a 26-character stamp, filesystems allow 255 bytes


def check_name(name: Any) -> None:
    """`name` ends the run folder's name: one path component, nothing that leaves outputs/."""
    text = str(name)
    bad = (
        not text
        or text in (".", "..")
        or any(c in text for c in "/\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in text)
        or len(text.encode()) > NAME_MAX
    )
    if bad:
        raise ConfigError(
            f"name={text!r}: must be one folder name: not empty, no '/' or '\\', not '.' or "
            f"'..', no control characters, at most {NAME_MAX} bytes; e.g. name=cnn-lr0.1"
        )


def _check_monitor(cfg: DictConfig) -> None:
    monitor = cfg.trainer.monitor
    split, _, metric = monitor.partition("/")
    names = catalogue.metric_names(cfg.dataset, cfg.task)
    if split not in ("train", "val") or metric not in names:
        choices = ", ".join(f"val/{m}" for m in names)
        what = f"dataset.task={cfg.dataset.task}"
        what = f"task={cfg.task}" if cfg.task in catalogue.SHAPES else what
        raise ConfigError(
            f"trainer.monitor={monitor}: {what} reports {choices} (or the same under train/)"
        )


def _check_known_keys(node: DictConfig, schema: type, prefix: str) -> None:
    """Keys the schema types: one added with `+key=value` is refused like a misspelt one. (A
    group option's own keys are passed to its constructor, which refuses unknown ones.)"""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    known = list(fields)
    for key in node:
        name = f"{prefix}{key}"
        if key not in known and key != "hydra":
            near = difflib.get_close_matches(str(key), known, n=1)
            where = prefix.rstrip(".") or "the run config"
            hint = (
                f"did you mean {prefix}{near[0]}?" if near else f"{where} has: {', '.join(known)}"
            )
            raise ConfigError(f"{name}: unknown key; {hint}")
        nested = fields[key].default_factory if key in fields else None
        if dataclasses.is_dataclass(nested) and isinstance(node[key], DictConfig):
            _check_known_keys(node[key], nested, f"{name}.")


def _check_devices(cfg: DictConfig) -> None:
    t = cfg.trainer
    at_least(cfg, "trainer.devices", 1)
    if t.devices == 1:
        return
    if t.batch_size % t.devices:
        raise ConfigError(
            f"trainer.batch_size={t.batch_size}: it is the global batch, split evenly over "
            f"trainer.devices={t.devices} processes; make it a multiple of {t.devices} (e.g. "
            f"{t.batch_size - t.batch_size % t.devices or t.devices})"
        )
    if t.accelerator == "mps":
        raise ConfigError(
            f"trainer.devices={t.devices}: an Apple GPU (trainer.accelerator=mps) trains in one "
            "process; set trainer.devices=1"
        )
    if cfg.optimizer._target_ == "torch.optim.LBFGS":
        raise ConfigError(
            f"trainer.devices={t.devices}: LBFGS's line search decides on each process's own "
            "loss, so the processes would disagree; use optimizer=lbfgs with trainer.devices=1"
        )


def _check_optimizer(cfg: DictConfig, key: str = "optimizer") -> None:
    node = cfg[key]
    target = node._target_
    if target == "torch.optim.LBFGS" and cfg.task == "adversarial":
        raise ConfigError(
            f"{key}=lbfgs: its line search re-evaluates one loss, but task=adversarial "
            "alternates two; pick another optimizer"
        )
    if target == "torch.optim.LBFGS" and cfg.trainer.precision == "fp16":
        raise ConfigError(
            "trainer.precision=fp16: its grad scaler cannot drive LBFGS's closure; use "
            "trainer.precision=bf16 or fp32 with optimizer=lbfgs"
        )
    if target == "torch.optim.LBFGS" and node.param_groups:
        raise ConfigError(
            f"{key}.param_groups: torch.optim.LBFGS keeps one parameter group; set "
            f"{key}.param_groups=[] or pick another optimizer"
        )
    for i, group in enumerate(node.param_groups):
        if "match" not in group:
            raise ConfigError(
                f"{key}.param_groups[{i}]={OmegaConf.to_container(group)}: needs a `match` "
                'pattern over parameter names, e.g. {match: "fc1.*", lr: 1.0e-4}'
            )


def _check_scheduler(cfg: DictConfig) -> None:
    target = cfg.scheduler._target_
    if target == "torch.optim.lr_scheduler.ReduceLROnPlateau" and cfg.scheduler.interval != "epoch":
        raise ConfigError(
            f"scheduler.interval={cfg.scheduler.interval}: plateau steps on the monitored metric "
            "after each validation; set scheduler.interval=epoch"
        )


def at_least(cfg: DictConfig, key: str, low: float, optional: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return
    if value is None or value < low:
        hint = " (or null)" if optional else ""
        raise ConfigError(f"{key}={value}: must be >= {low}{hint}")


def positive(cfg: DictConfig, key: str, optional: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        hint = " (or null)" if optional else ""
        raise ConfigError(f"{key}={value}: must be a number > 0{hint}")


def one_of(cfg: DictConfig, key: str, choices: type[Choice] | tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    names = [str(c) for c in choices]
    if value not in names:
        raise ConfigError(f"{key}={value}: must be one of {', '.join(names)}")


def _check_batch_count(cfg: DictConfig, key: str) -> None:
    """null, a number of batches (an int >= 1) or a fraction of them (a float in (0, 1])."""
    value = OmegaConf.select(cfg, key)
    count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    fraction = isinstance(value, float) and 0.0 < value <= 1.0
    if value is not None and not count and not fraction:
        raise ConfigError(
            f"{key}={value}: must be a number of batches (an integer >= 1), a fraction of them "
            "(a float in (0, 1], e.g. 0.25), or null for all"
        )


def trainer_of(cfg: DictConfig) -> TrainerConfig:
    """cfg.trainer as its schema dataclass: converted once, where a run starts, and passed on
    in that one shape (the loop reads it every step; an OmegaConf attribute costs tens of
    microseconds). fast_dev_run is applied here: one epoch of one batch of each split."""
    trainer = OmegaConf.to_object(cfg.trainer)
    if trainer.fast_dev_run:
        one = {"max_epochs": 1, "max_steps": None, "val_every_epochs": 1, "log_every_n_steps": 1}
        trainer = dataclasses.replace(trainer, **one)
    return trainer
