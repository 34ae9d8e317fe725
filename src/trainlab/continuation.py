"""What a launch does in a run folder that is not new: resume the run there from its newest
checkpoint, start it over in place (it stopped before its first checkpoint, so nothing was
trained), or refuse (another config, a finished run that cannot be verified, a folder that is
not a trainlab run). `trainlab resume` and `trainer.resume=auto` decide here, and the Hydra
callback asks before Hydra writes into the folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainlab import checkpoint, config, rundir
from trainlab.errors import ConfigError
from trainlab.lock import LOCK_FILE

log = logging.getLogger(__name__)


@dataclass
class Resume:
    """A run continuing in its folder: the config changes it brings (already in the config)
    and the keys the user allowed to change (--allow-change)."""

    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    allow: list[str] = field(default_factory=list)


def decide(cfg: DictConfig, run_dir: Path, multirun: bool) -> Resume | None:
    """What a job does in a folder that is not new: with trainer.resume=auto it continues the
    trainlab run there (the command line may only change what `trainlab resume` may), or
    starts it over in place if it stopped before its first checkpoint; anything else in the
    folder is refused. None: train from the start."""
    if not _holds_run(run_dir):
        return None
    if cfg.trainer.resume != "auto":
        if not multirun:
            return None  # a single run's callback refused a used folder already
        raise ConfigError(
            f"{run_dir}: this job's folder holds a run already and a run never overwrites "
            "another; use a new hydra.sweep.dir, or trainer.resume=auto to continue it"
        )
    if not (run_dir / "config.yaml").is_file():
        found = sorted(p.name for p in run_dir.iterdir() if p.name not in OURS_BEFORE_CONFIG)
        raise ConfigError(
            f"trainer.resume=auto: {run_dir} holds files that are not a trainlab run "
            f"({', '.join(found[:5])}); it continues only a folder a trainlab run wrote. Pick "
            "another hydra.run.dir"
        )
    return of(run_dir, cfg, allow=[])


# What a run folder holds before its config.yaml: Hydra's record and the lock.
OURS_BEFORE_CONFIG = (".hydra", LOCK_FILE)


def _holds_run(run_dir: Path) -> bool:
    return any(p.name not in OURS_BEFORE_CONFIG for p in run_dir.iterdir())


def of(run_dir: Path, cfg: DictConfig, allow: list[str]) -> Resume | None:
    """How `cfg` continues the run stored in `run_dir`: a Resume from its newest checkpoint, or
    None to start it over in place when it stopped before its first checkpoint (exact: nothing
    was trained). Refused: a config that changes what the run trains, and starting over a run
    that has results or checkpoint files its manifest does not list."""
    stored = config.load_run_config(run_dir)
    found = config.changes(stored, cfg)
    config.check_resume_changes(found, allow)
    _check_length_key(stored, cfg)
    ckpt_dir = run_dir / "checkpoints"
    if checkpoint.has_checkpoint(ckpt_dir):
        return Resume(found, allow)
    if (run_dir / "metrics.json").is_file() or rundir.status_of(run_dir).get("status") == (
        "completed"
    ):
        raise ConfigError(
            f"{run_dir}: holds a finished run's results, but checkpoints/{checkpoint.MANIFEST} "
            "lists no checkpoint; it is not started over in place. Restore the manifest from a "
            "backup, or train a new run"
        )
    # A kill during the first save leaves one step file the manifest never committed; more
    # than one means a run that saved before and lost its manifest: not started over.
    stray = sorted(p.name for p in ckpt_dir.glob("step_*.pt")) if ckpt_dir.is_dir() else []
    if len(stray) > 1:
        raise ConfigError(
            f"{run_dir}: checkpoints/ holds {', '.join(stray[:3])} but "
            f"{checkpoint.MANIFEST} lists none of them, so none can be verified; it is not "
            "started over in place. Restore the manifest from a backup, or train a new run"
        )
    log.info(f"{run_dir}: no checkpoint yet (it stopped before its first save): starting over")
    return None


def _check_length_key(stored: DictConfig, cfg: DictConfig) -> None:
    """trainer.max_epochs does nothing while trainer.max_steps bounds the run: say which key
    would extend it instead of training nothing."""
    old, new = stored.trainer, cfg.trainer
    bounded = new.max_steps is not None and new.max_steps == old.max_steps
    if bounded and new.max_epochs != old.max_epochs:
        raise ConfigError(
            f"trainer.max_epochs={new.max_epochs}: has no effect, the run is bounded by "
            f"trainer.max_steps={new.max_steps}; extend it with trainer.max_steps=<more>, or "
            "count epochs again with trainer.max_steps=null"
        )


def check_early(cfg: DictConfig, run_dir: Path) -> None:
    """For the Hydra callback, before Hydra writes this launch's .hydra/ into a used folder
    with trainer.resume=auto: refuse now what the task would refuse, so a refused launch
    touches nothing there. `cfg` is the whole config (hydra included); it is not changed."""
    task = OmegaConf.create({
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in ((k, cfg[k]) for k in cfg if k != "hydra")
    })  # fmt: skip
    config.absolute_paths(task)
    decide(task, run_dir, multirun=False)
