"""The resume policy: what a launch does in a run folder that is not new (resume the run there
from its newest checkpoint, start it over in place because it stopped before its first
checkpoint, or refuse), and what a resume may change: config keys, run length, world size,
environment. `trainlab resume` and `trainer.resume=auto` decide here, and the Hydra callback
asks before Hydra writes into the folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab import checkpoint_files, dataspec, runconfig, rundir
from trainlab.config import TrainerConfig
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
    stored = runconfig.load_run_config(run_dir)
    dataspec.from_the_run(stored, cfg)
    found = changes(stored, cfg)
    check_resume_changes(found, allow)
    _check_length_key(stored, cfg)
    ckpt_dir = run_dir / "checkpoints"
    if checkpoint_files.has_checkpoint(ckpt_dir):
        return Resume(found, allow)
    if (run_dir / "metrics.json").is_file() or rundir.status_of(run_dir).get("status") == (
        "completed"
    ):
        raise ConfigError(
            f"{run_dir}: holds a finished run's results, but "
            f"checkpoints/{checkpoint_files.MANIFEST} lists no checkpoint; it is not started "
            "over in place. Restore the manifest from a backup, or train a new run"
        )
    # A kill during the first save leaves one step file the manifest never committed; more
    # than one means a run that saved before and lost its manifest: not started over.
    stray = sorted(p.name for p in ckpt_dir.glob("step_*.pt")) if ckpt_dir.is_dir() else []
    if len(stray) > 1:
        raise ConfigError(
            f"{run_dir}: checkpoints/ holds {', '.join(stray[:3])} but "
            f"{checkpoint_files.MANIFEST} lists none of them, so none can be verified; it is not "
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
    # Unresolved, as the task will get it: a model's ${dataset.num_features} must see what
    # dataspec.from_the_run fills in from the stored run, not the null the YAML holds.
    task = OmegaConf.create({
        k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
        for k, v in ((k, cfg._get_node(k)) for k in cfg if k != "hydra")
    })  # fmt: skip
    runconfig.absolute_paths(task)
    decide(task, run_dir, multirun=False)


# Keys a resume may change without changing what is being trained: how long, how often it
# logs, validates and saves, when it stops early. Anything else needs --allow-change KEY.
HARMLESS_ON_RESUME = (
    "trainer.max_epochs", "trainer.max_steps", "trainer.log_every_n_steps",
    "trainer.val_every_epochs", "trainer.checkpoint.", "trainer.early_stopping.",
    "trainer.resume", "trainer.progress", "trainer.tensorboard.", "name", "paths.output_dir",
)  # fmt: skip


def changes(stored: DictConfig, new: DictConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored value, new value)} for every leaf that differs."""
    a = _leaves(OmegaConf.to_container(stored, resolve=True))
    b = _leaves(OmegaConf.to_container(new, resolve=True))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_changes(found: dict[str, tuple[Any, Any]], allowed: list[str]) -> None:
    """Refuse changes that would not continue the same run, naming them, unless allowed."""

    def ok(key: str) -> bool:
        if key.startswith(HARMLESS_ON_RESUME) or key in HARMLESS_ON_RESUME:
            return True
        return any(key == a or key.startswith(a.rstrip(".") + ".") for a in allowed)

    refused = {k: v for k, v in found.items() if not ok(k)}
    if refused:
        listed = ", ".join(f"{k} ({old} -> {new})" for k, (old, new) in refused.items())
        flags = " ".join(f"--allow-change {k}" for k in refused)
        raise ConfigError(
            f"resume would change {listed}: the run was trained with the stored values, so this "
            f"would not continue the same run. Start a new run, or insist with {flags}"
        )


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out |= _leaves(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): node}


def check_world(trainer: TrainerConfig, launched: int, run_dir: Path) -> None:
    """A resume runs on as many processes as the run was trained on, or says what changing
    that would change."""
    n = trainer.devices
    if n == launched:
        return
    same = f"torchrun --nproc_per_node={n} -m trainlab resume" if n > 1 else "trainlab resume"
    batch = trainer.batch_size
    raise ConfigError(
        f"trainer.devices={n}: the run was trained on {n} process(es) and this resume has "
        f"{launched}; continue it as it was with `{same} {run_dir}`, or change it with "
        f"trainer.devices={launched} --allow-change trainer.devices: each process's share of "
        f"trainer.batch_size={batch} would go from {batch // n} to {batch // launched} and sums "
        "would add up in another order, so it would not continue bitwise"
    )


def check_length(trainer: TrainerConfig, epoch: int, step: int) -> None:
    """A resume can extend a run, not shorten it below what it has trained."""
    if trainer.max_steps is not None and trainer.max_steps < step:
        raise ConfigError(
            f"trainer.max_steps={trainer.max_steps}: the run has taken {step} steps "
            "already; a resume can extend it, not shorten it"
        )
    if trainer.max_steps is None and trainer.max_epochs < epoch:
        raise ConfigError(
            f"trainer.max_epochs={trainer.max_epochs}: the run has trained {epoch} epochs "
            "already; a resume can extend it, not shorten it"
        )


def check_environment(
    saved: dict[str, Any], current: dict[str, Any], allow: list[str]
) -> list[str]:
    """What the checkpoint was trained with against what this resume has: a different thread
    count is adopted (it changes float reductions), precision and world size are refused
    unless allowed. Returns notes for run.json on what was allowed."""
    notes = []
    if saved["num_threads"] != current["num_threads"]:
        log.info(
            f"using the {saved['num_threads']} CPU threads the run was trained with (this "
            f"machine's default is {current['num_threads']}): float sums depend on it"
        )
        torch.set_num_threads(saved["num_threads"])
        current["num_threads"] = saved["num_threads"]
    for key, flag in (("precision", "trainer.precision"), ("world_size", "trainer.devices")):
        if saved.get(key) == current[key]:  # .get: checkpoints from before a key was kept
            continue
        if flag not in allow:
            raise ConfigError(
                f"the run was trained with {key} {saved.get(key)} and this resume has "
                f"{current[key]}: it would not continue exactly; set it back, or allow it with "
                f"--allow-change {flag}"
            )
        notes.append(
            f"{key} changed from {saved.get(key)} to {current[key]} (--allow-change {flag}): "
            "the run continues, but not bitwise as it would have"
        )
    if saved["device"].split(":")[0] != current["device"].split(":")[0]:
        notes.append(
            f"trained on {saved['device']}, continues on {current['device']}: the result will "
            "not be bitwise what an uninterrupted run gives"
        )
    return notes


def apply_optimizer_changes(parts: Any, found: dict[str, tuple[Any, Any]]) -> None:
    """Loading an optimizer's state brings back its saved options (lr, weight_decay, ...); an
    allowed change of one must win over that, in every group, and rescale its schedule. Every
    optimizer by its config key: `optimizer`, and a GAN's `optimizer_g` (with `scheduler_g`)."""
    for node, optimizer in parts.optimizers().items():
        scheduler = parts.scheduler if node == "optimizer" else parts.extra.get("scheduler_g")
        _apply_changes(optimizer, scheduler, found, node)


def _apply_changes(
    optimizer: Any, scheduler: Any, found: dict[str, tuple[Any, Any]], node: str
) -> None:
    for key, (old, new) in found.items():
        option = key.removeprefix(f"{node}.")
        if not key.startswith(f"{node}.") or "." in option or option not in optimizer.defaults:
            continue
        for group in optimizer.param_groups:
            group[option] = new
        if option == "lr" and scheduler is not None:
            scheduler.base_lrs = [new for _ in scheduler.base_lrs]
        log.info(f"{node}.{option} is now {new} in every parameter group (was {old})")
