"""The run folder: claimed exclusively before a run writes to it, and the small JSON records
in it (run.json, status.json, metrics.json). Also the Hydra callback that checks the config
and claims the folder before Hydra creates it. No torch import.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from trainlab import config
from trainlab.errors import ConfigError, TrainlabError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()

# Parents that claim() had to create for a run folder, so release() removes those and no others.
_made_parents: dict[Path, list[Path]] = {}


def claim(path: Path) -> Path:
    """Create `path` exclusively; if it exists (same stamp, another process), add -1, -2 ..."""
    missing = [p for p in path.absolute().parents if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        candidate = path if i == 0 else path.with_name(f"{path.name}-{i}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        _made_parents[candidate.absolute()] = missing  # nearest first
        return candidate
    raise RuntimeError(f"could not create a new folder next to {path}")


def release(run_dir: Path) -> None:
    """Undo claim() when a run is rejected before writing anything: only Hydra's .hydra/ inside."""
    entries = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else {"?"}
    if entries <= {".hydra"}:
        for p in (run_dir / ".hydra").glob("*"):
            p.unlink()
        if (run_dir / ".hydra").exists():
            (run_dir / ".hydra").rmdir()
        run_dir.rmdir()
        # Folders claim() made for it (outputs/runs/ on a first run) go too, if still empty.
        for parent in _made_parents.pop(run_dir.absolute(), []):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()


def archive_hydra_record(run_dir: Path) -> None:
    """Move the previous launch's .hydra/*.yaml to .hydra/attempt-<k>/ before Hydra writes
    this launch's: every attempt's record is kept."""
    hydra_dir = run_dir / ".hydra"
    files = sorted(hydra_dir.glob("*.yaml")) if hydra_dir.is_dir() else []
    if not files:
        return
    k = len(list(hydra_dir.glob("attempt-*"))) + 1
    archive = hydra_dir / f"attempt-{k}"
    archive.mkdir()
    for path in files:
        path.rename(archive / path.name)


def write_atomic(path: Path, payload: bytes, sync_folder: bool = True) -> None:
    """Replace `path` with `payload` so that no reader, and no crash, ever sees half a file:
    temp file in the same folder, fsync, rename over, fsync the folder (sync_folder=False
    leaves that to a later write in the same folder, which makes both renames durable)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; use what open() would
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not sync_folder:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


def write_status(run_dir: Path, status: str, reason: str | None = None) -> None:
    """status.json: running | completed | failed | interrupted | diverged, and a one-line reason."""
    record: dict[str, Any] = {"status": status, "updated": now(), "pid": os.getpid()}
    if reason:
        record["reason"] = reason
    write_json(run_dir / "status.json", record)


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the checkout trainlab runs from; empty outside a git checkout."""
    try:
        run = dict(cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], **run).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": dirty}


def run_record(
    name: str, seed: int, launch: dict[str, Any], environment: dict[str, Any], argv: list[str]
) -> dict[str, Any]:
    """run.json: how the run was launched and on what, enough to reproduce it."""
    return {
        "name": name,
        "seed": seed,
        "overrides": launch.get("overrides", []),
        "choices": launch.get("choices", {}),
        "versions": {"python": platform.python_version()} | {p: _version(p) for p in PACKAGES},
        "git": git_state(),
        "host": socket.gethostname(),
        "environment": environment,
        "attempts": [launch_record(argv)],
    }


PACKAGES = ("trainlab", "torch", "torchvision", "hydra-core", "omegaconf", "numpy", "tensorboard")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def launch_record(argv: list[str]) -> dict[str, Any]:
    """One attempt's entry in run.json (a resume appends another)."""
    return {"started": now(), "argv": argv, "host": socket.gethostname(), "pid": os.getpid()}


class RunFolderCallback(Callback):
    """Checks the config, then claims the run (or sweep) folder before Hydra creates it.

    Hydra itself creates `hydra.run.dir` with exist_ok=True, so two runs started in the same
    microsecond would share it; claiming it here first makes every run folder new. A config
    error exits 2 here, before any folder exists.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from trainlab.distributed import launched_world  # torch: only when a run starts

        HydraConfig.instance().set_config(config)  # run_job sets it too, after this callback
        _check_or_exit(config)
        if launched_world().rank > 0:
            # Under torchrun rank 0 alone makes the run folder and shares it (train.hydra_task);
            # this rank's Hydra writes nothing, in a folder that already exists.
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.run.dir = os.getcwd()
                config.hydra.output_subdir = None
            return
        with read_write(config.hydra.run):
            requested = Path(config.hydra.run.dir)
            if _set_by_user(config, "hydra.run.dir"):
                if requested.exists() and any(requested.iterdir()):
                    if config.trainer.resume != "auto":
                        _exit_config_error(
                            f"hydra.run.dir={requested}: that folder holds a run already and a "
                            f"run never overwrites another; pick a new folder, `trainlab resume "
                            f"{requested}`, or trainer.resume=auto"
                        )
                    archive_hydra_record(requested)
                requested.mkdir(parents=True, exist_ok=True)
            else:
                config.hydra.run.dir = str(claim(requested))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _exit_config_error(
                "-m under torchrun: every process would run the whole sweep. Run one torchrun "
                "per sweep point, or let the sweep's launcher start the processes of each job: "
                "-m hydra/launcher=slurm hydra.launcher.tasks_per_node=N trainer.devices=N"
            )
        HydraConfig.instance().set_config(config)
        # Sweep values are not applied yet; this checks everything the sweep does not vary.
        _check_or_exit(config)
        if _set_by_user(config, "hydra.sweep.dir"):
            return  # an explicit sweep folder may be continued (e.g. an Optuna study)
        sweep_dir = claim(Path(config.hydra.sweep.dir))
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(sweep_dir)
            # Each job re-composes its config from the overrides; this one makes it use our folder.
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={sweep_dir}")


def _set_by_user(config: DictConfig, key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def _check_or_exit(cfg: DictConfig) -> None:
    try:
        config.check(cfg)
    except ConfigError as e:
        _exit_config_error(str(e))


def _exit_config_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(ConfigError.exit_code)


def report(error: TrainlabError) -> int:
    """Print a user error as one line and return its exit code."""
    print(f"error: {error}", file=sys.stderr)
    return error.exit_code
