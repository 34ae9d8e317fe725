"""The run folder: claimed exclusively before a run writes to it (and locked, see lock.py),
and the small records in it (config.yaml, run.json, status.json, metrics.json), each written
atomically. Also the Hydra callback that checks the config and claims the folder before Hydra
creates it. No torch import.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from trainlab import config, lock
from trainlab.errors import ConfigError, RecordWriteError, TrainlabError, first_line, os_reason
from trainlab.lock import LOCK_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()

# Parents that claim() had to create for a run folder, so release() removes those and no others.
_made_parents: dict[Path, list[Path]] = {}


def claim(path: Path, key: str = "paths.output_dir") -> Path:
    """Create `path` exclusively; if it exists (same stamp, another process), add -1, -2 ...
    `key` is the config key to name when the folder cannot be made at all."""
    missing = [p for p in path.absolute().parents if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            candidate = path if i == 0 else path.with_name(f"{path.name}-{i}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            _made_parents[candidate.absolute()] = missing  # nearest first
            return candidate
    except OSError as e:
        raise ConfigError(
            f"{key}: cannot create {path} ({os_reason(e)}); pick a folder you can write to"
        ) from None
    raise ConfigError(f"{key}: could not create a new folder next to {path}")


def make_dir(path: Path, key: str) -> None:
    """mkdir -p, with a failure as one line naming the config key."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"{key}={path}: cannot create it ({os_reason(e)}); pick a folder you can write to"
        ) from None


def release(run_dir: Path) -> None:
    """Undo claim() when a run is rejected before writing anything: only Hydra's .hydra/ (and
    this process's lock) inside."""
    entries = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else {"?"}
    mine = LOCK_FILE not in entries or lock.holds(run_dir)
    if entries <= {".hydra", LOCK_FILE} and mine:
        for p in (run_dir / ".hydra").glob("*"):
            p.unlink()
        if (run_dir / ".hydra").exists():
            (run_dir / ".hydra").rmdir()
        lock.disown(run_dir)
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
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


def write_atomic(
    path: Path, payload: bytes, sync_folder: bool = True, replace: bool = True
) -> None:
    """Replace `path` with `payload` so that no reader, and no crash, ever sees half a file:
    temp file in the same folder, fsync, rename over, fsync the folder (sync_folder=False
    leaves that to a later write in the same folder, which makes both renames durable).
    replace=False writes only a new file: FileExistsError if `path` is there, even if it
    appeared a moment ago (a hard link cannot go over a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; use what open() would
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
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


def write_record(path: Path, text: str) -> None:
    """A run's record (config.yaml, run.json, status.json, ...), written atomically; a failure
    (disk full, read-only) is one line and the previous version stays."""
    try:
        write_atomic(path, text.encode())
    except OSError as e:
        raise RecordWriteError(
            f"could not write {path} ({os_reason(e)}); its previous version is kept"
        ) from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_record(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON record; a damaged one is a one-line error naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{path}: unreadable ({first_line(e)}); the record is damaged: restore it from a "
            "backup, or move the file away"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a trainlab record (a JSON object was expected)")
    return data


# Temp files of trainlab's atomic writes: .<final name>.<random or pid>.tmp
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")
RECORDS = (
    "config.yaml",
    "run.json",
    "status.json",
    "metrics.json",
    "metrics.csv",
    "summary.csv",
    "summary.md",
)


def sweep_temp_files(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Remove the temp files an interrupted atomic write of one of `names` (glob patterns of
    the final file's name) left; any other file, a user's `.x.tmp` too, stays."""
    stale = []
    for path in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
        found = _TEMP.match(path.name)
        if found and any(fnmatch.fnmatchcase(found["name"], n) for n in names):
            path.unlink(missing_ok=True)
            stale.append(path)
    return stale


def now(ago_s: float = 0.0) -> str:
    """The local time (ago_s seconds ago), ISO 8601 to the millisecond."""
    moment = datetime.now(timezone.utc).astimezone() - timedelta(seconds=ago_s)
    return moment.isoformat(timespec="milliseconds")


def write_status(run_dir: Path, status: str, reason: str | None = None) -> None:
    """status.json: running | completed | failed | interrupted | diverged, and a one-line reason."""
    record: dict[str, Any] = {"status": status, "updated": now(), "pid": os.getpid()}
    if reason:
        record["reason"] = reason
    write_json(run_dir / "status.json", record)


def status_of(run_dir: Path) -> dict[str, Any]:
    """status.json's record ({} if there is none, or it is damaged: it is rewritten anyway)."""
    try:
        return read_json(run_dir / "status.json") if (run_dir / "status.json").is_file() else {}
    except ConfigError:
        return {}


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
    name: str, seed: int, launch: dict[str, Any], environment: dict[str, Any], argv: list[str],
    started: float,
) -> dict[str, Any]:  # fmt: skip
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
        "attempts": [launch_record(argv, started)],
    }


PACKAGES = ("trainlab", "torch", "torchvision", "hydra-core", "omegaconf", "numpy", "tensorboard")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def launch_record(argv: list[str], started: float) -> dict[str, Any]:
    """One attempt's entry in run.json (a resume appends another); `started`: the attempt's
    start (time.perf_counter), the moment its clock (metrics.json wall_s) counts from."""
    return {"started": now(time.perf_counter() - started), "argv": argv,
            "host": socket.gethostname(), "pid": os.getpid()}  # fmt: skip


class RunFolderCallback(Callback):
    """Checks the config, then claims the run (or sweep) folder before Hydra creates it.

    Hydra itself creates `hydra.run.dir` with exist_ok=True, so two runs started in the same
    microsecond would share it; claiming it here first makes every run folder new. A config
    error exits 2 here, before any folder exists.
    """

    # Hydra turns an exception in a callback into a warning and goes on: a check that fails
    # must end the launch here, or the run would go ahead unchecked.
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _or_exit(self._on_run_start, config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _or_exit(self._on_multirun_start, config)

    def _on_run_start(self, config: DictConfig) -> None:
        from trainlab.distributed import launched_world  # torch: only when a run starts

        HydraConfig.instance().set_config(config)  # run_job sets it too, after this callback
        _check_or_exit(config)
        if launched_world().rank > 0:
            # Under torchrun rank 0 alone makes the run folder and shares it (job.hydra_task);
            # this rank's Hydra writes nothing, in a folder that already exists.
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.run.dir = os.getcwd()
                config.hydra.output_subdir = None
            return
        with read_write(config.hydra.run):
            requested = Path(config.hydra.run.dir)
            if not _set_by_user(config, "hydra.run.dir"):
                run_dir = claim(requested)
                lock.own(run_dir)
                config.hydra.run.dir = str(run_dir)
                return
        # Made if needed, then locked, and only then looked into: two launches naming one
        # folder cannot both find it empty (no check-then-act).
        make_dir(requested, "hydra.run.dir")
        lock.own(requested)
        try:
            if holds_files(requested) and config.trainer.resume != "auto":
                raise ConfigError(
                    f"hydra.run.dir={requested}: that folder holds a run already and a run never "
                    f"overwrites another; pick a new folder, `trainlab resume {requested}`, or "
                    "trainer.resume=auto"
                )
            if holds_files(requested):
                from trainlab import continuation  # torch; refuse before Hydra writes there

                continuation.check_early(config, requested)
        except ConfigError:
            lock.disown(requested)
            raise
        archive_hydra_record(requested)

    def _on_multirun_start(self, config: DictConfig) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            exit_config_error(
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


def _or_exit(hook: Any, config: DictConfig) -> None:
    try:
        hook(config)
    except SystemExit:
        raise
    except ConfigError as e:
        exit_config_error(str(e))
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None


def holds_files(run_dir: Path) -> bool:
    """Whether the folder holds anything besides its lock file."""
    return any(p.name != LOCK_FILE for p in run_dir.iterdir())


def _set_by_user(config: DictConfig, key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def _check_or_exit(cfg: DictConfig) -> None:
    try:
        config.check(cfg)
    except ConfigError as e:
        exit_config_error(str(e))


def exit_config_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(ConfigError.exit_code)


def report(error: TrainlabError) -> int:
    """Print a user error as one line and return its exit code."""
    print(f"error: {message_of(error)}", file=sys.stderr)
    return error.exit_code


def message_of(error: BaseException) -> str:
    """The error's own message. A DataLoader worker's error comes back as the same class with
    the worker's whole traceback as its text: its last line is the message."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        return text.rstrip().splitlines()[-1].partition(": ")[2] or text
    return text
