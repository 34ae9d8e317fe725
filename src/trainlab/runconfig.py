"""A run's stored config read back: config.yaml, typed by the schema and checked for targets
before anything uses it (a run folder may come from someone else), the source of truth for
resume, eval and predict; and key=value overrides applied to it. No torch import."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainlab import targets
from trainlab.config import CONF_DIR, TrainConfig
from trainlab.errors import ConfigError, first_line


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A copy of cfg with key=value overrides (values parsed as YAML), typed by the schema."""
    out = OmegaConf.create(OmegaConf.to_container(cfg))
    out = OmegaConf.merge(OmegaConf.structured(TrainConfig), out)
    OmegaConf.set_struct(out, True)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item}: an override is key=value, e.g. trainer.max_epochs=20")
        try:
            OmegaConf.update(out, key, parse_value(value), merge=True)
        except Exception as e:
            raise ConfigError(f"{item}: {str(e).splitlines()[0]}") from None
    return out


# What Hydra's override grammar reads as a float and YAML 1.1 as a string: 5e-4, 1E3, 2.e-5.
FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_value(text: str) -> Any:
    """An override's value as YAML reads it, but `5e-4` a float, as `trainlab train` (Hydra)
    reads it too: a resume's `optimizer.lr=5e-4` is the number it is at the first launch."""
    if not text:
        return None
    return float(text) if FLOAT.fullmatch(text.strip()) else yaml.safe_load(text)


# A dataset node's keys that name files or folders (the loaders in datasets.py and synthetic.py).
DATASET_PATH_KEYS = ("path", "test_path", "root", "train_dir", "test_dir")


def absolute_paths(cfg: DictConfig) -> None:
    """Path keys (paths.*, and a dataset's path, test_path, root, train_dir, test_dir) are
    relative to the launch folder as typed; config.yaml must say the same thing to a `trainlab
    resume`, `eval` or `predict` started anywhere else, so they are stored absolute. A URL is
    left as it is."""
    for key in cfg.paths:
        cfg.paths[key] = str(Path(cfg.paths[key]).resolve())
    for key in DATASET_PATH_KEYS:
        if key not in cfg.dataset:  # only the datasets read from files have them
            continue
        value = cfg.dataset[key]
        if isinstance(value, str) and "://" not in value:
            cfg.dataset[key] = str(Path(value).expanduser().resolve())


def load_run_config(run_dir: Path) -> DictConfig:
    """The stored, resolved config of a run, typed by the schema: the source of truth on resume.
    Every `_target_` in it is checked before anything uses it (a run folder may come from
    someone else)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        if (run_dir / ".hydra").is_dir():
            raise ConfigError(
                f"{run_dir}: this run stopped during start-up, before it wrote config.yaml, so "
                "nothing was trained and there is nothing to continue; start it again with "
                "`trainlab train` (its overrides are in .hydra/overrides.yaml)"
            )
        raise ConfigError(
            f"{run_dir}: no config.yaml here, so it is not a trainlab run folder (every run "
            "writes one when it starts); give the folder of a run, e.g. outputs/runs/<run>"
        )
    try:
        stored = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        copies = sorted((run_dir / "checkpoints").glob("*.pt"))
        copy = (
            f"; every checkpoint holds a copy (its 'config' entry), e.g. {copies[-1]}"
            if copies
            else ""
        )
        raise ConfigError(
            f"{path}: does not parse{where} ({type(e).__name__}); restore the file the run "
            f"wrote{copy}"
        ) from None
    if not isinstance(stored, DictConfig):
        raise ConfigError(f"{path}: not a run's config (a YAML mapping was expected)")
    targets.check(stored)
    # trainer keys added to trainlab after the run was trained take their current defaults.
    trainer_defaults = (
        {"trainer": OmegaConf.load(TRAINER_DEFAULTS)} if TRAINER_DEFAULTS.is_file() else {}
    )
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), trainer_defaults, stored)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(
            f"{path}: {key}: {first_line(e)}; the file is not what the run wrote, restore it"
        ) from None
    OmegaConf.set_struct(cfg, True)
    return cfg


TRAINER_DEFAULTS = CONF_DIR / "trainer" / "default.yaml"
