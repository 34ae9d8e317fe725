"""Checkpoints: the one dict a run saves, how it is written (atomically, hashed in a manifest)
and how it is read back. What is saved and what resume restores sit side by side here.

The dict holds tensors and plain containers only, so torch.load(weights_only=True) reads it
with no allowlist; a file that is anything else is refused, never unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import os
import queue
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from trainlab import rundir
from trainlab.errors import TrainlabError
from trainlab.rundir import write_atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class CheckpointError(TrainlabError):
    """A checkpoint is missing, corrupt, or not one of ours."""


class CheckpointSaveError(TrainlabError):
    """Writing a checkpoint failed (disk full, file too large); the previous ones are intact."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ---- what is saved, and what resume restores ----


def state_dict(
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    loop: dict[str, Any],
    config: str,
    environment: dict[str, Any],
    ranks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict. `config` is the resolved config as YAML text: one string pickles
    in microseconds where a nested dict takes milliseconds (torch.save calls back into Python
    for every object), and this runs at every save; the per-epoch history is packed into one
    tensor for the same reason. Under DDP, `ranks` holds each rank's random streams and
    running sums (rank 0's are also the top-level ones)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "loop": loop | {"history": pack_history(loop["history"])},
        "rng": capture_rng(),
        "config": config,
        "environment": environment,
        "ranks": ranks,
    }


def restore(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """Load every stateful part from `ckpt` and return the loop state. The random streams are
    not restored here: the caller restores ckpt["rng"] with restore_rng as the very last thing
    before training continues, after the data has been fast-forwarded, so that nothing in
    between can draw from them."""
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None:
        scaler.load_state_dict(ckpt["grad_scaler"])
    return ckpt["loop"] | {"history": unpack_history(ckpt["loop"]["history"])}


def history(ckpt: dict[str, Any]) -> list[dict[str, float]]:
    """The per-epoch records a loaded checkpoint holds."""
    return unpack_history(ckpt["loop"]["history"])


def pack_history(history: list[dict[str, float]]) -> dict[str, Any]:
    """The per-epoch records as one float64 tensor (NaN where a record lacks a key) and the
    column names: a few objects to pickle instead of thousands. Exact: every value is a float
    or an int below 2**53."""
    columns = list(dict.fromkeys(key for record in history for key in record))
    values = [[float(r.get(c, math.nan)) for c in columns] for r in history]
    tensor = torch.tensor(values, dtype=torch.float64).reshape(len(history), len(columns))
    return {"columns": columns, "values": tensor}


def unpack_history(packed: dict[str, Any]) -> list[dict[str, float]]:
    records = []
    for row in packed["values"].tolist():
        record = {c: v for c, v in zip(packed["columns"], row, strict=True) if not math.isnan(v)}
        for key in ("epoch", "step"):
            if key in record:
                record[key] = int(record[key])
        records.append(record)
    return records


def capture_rng() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        # via numpy: torch.tensor() of 625 Python ints takes five times as long
        "python": {
            "version": version,
            "state": torch.from_numpy(np.array(mt_state, dtype=np.int64)),
            "gauss": gauss,
        },
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- how it is written, rotated and read ----
#
# Every save writes step_<n>.pt (a resumable state) and, for ASGD's averaged weights, also
# best_step_<n>.pt; last.pt and best.pt are hard links (copies where links fail) to the newest
# and the best. manifest.json lists each file's sha256, size, step, epoch and metric, and which
# files `last` and `best` are; it is written after the files and is the commit marker: a file
# it does not list is never loaded or deleted.


@dataclass
class Policy:
    """trainer.checkpoint: which checkpoints are kept after each save."""

    keep_last: int  # newest resumable checkpoints kept (>= 2: the fallback needs one)
    top_k: int  # best-so-far checkpoints kept (best.pt is the newest of them)


def serialize(state: dict[str, Any]) -> bytes:
    """The checkpoint file's bytes: the snapshot, taken in the training thread."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save(
    ckpt_dir: Path,
    state: dict[str, Any],
    info: dict[str, Any],
    policy: Policy,
    best: bool = False,
    best_state: dict[str, Any] | None = None,
) -> None:
    """Write `state` as step_<n>.pt and make it last.pt; if `best`, also best.pt (best_state, if
    given, is a different payload for it: ASGD's averaged weights). Then commit the manifest
    and rotate. A failed write leaves the previous files and manifest as they were."""
    best_payload = serialize(best_state) if best_state is not None else None
    commit(ckpt_dir, serialize(state), info, policy, best, best_payload)


def commit(
    ckpt_dir: Path,
    payload: bytes,
    info: dict[str, Any],
    policy: Policy,
    best: bool = False,
    best_payload: bytes | None = None,
) -> None:
    """The file work of save(), for serialised payloads."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(ckpt_dir)
    name = f"step_{info['step']}.pt"
    manifest["files"][name] = _write(ckpt_dir / name, payload, info, best and best_payload is None)
    _point(ckpt_dir / "last.pt", name)
    manifest["last"] = name
    if best:
        best_name = name
        if best_payload is not None:
            best_name = f"best_step_{info['step']}.pt"
            entry = _write(ckpt_dir / best_name, best_payload, info, best=True)
            manifest["files"][best_name] = entry | {"resumable": False}
        _point(ckpt_dir / "best.pt", best_name)
        manifest["best"] = best_name
    # Rotation is decided before the commit: the manifest stops naming the dropped files in
    # the same write that adds the new one, and only then are they deleted.
    dropped = _rotated_out(manifest, policy)
    for name in dropped:
        del manifest["files"][name]
    _write_manifest(ckpt_dir, manifest)
    for name in dropped:
        (ckpt_dir / name).unlink(missing_ok=True)


class Writer:
    """Writes checkpoints in a background thread, one at a time and in order: the training
    thread serialises (that is the snapshot; pickling holds the GIL, so it would gain nothing
    in a thread) and goes on while the files are written, hashed and fsynced and the manifest
    committed. A save waits for the previous one; wait() returns when everything handed over
    is committed and re-raises a failure. The thread lives as long as the writer (a daemon:
    a killed run loses at most the save in flight, which the manifest never committed)."""

    def __init__(self, ckpt_dir: Path, policy: Policy) -> None:
        self.ckpt_dir, self.policy = ckpt_dir, policy
        self._jobs: queue.Queue = queue.Queue(maxsize=1)
        self._done = threading.Event()
        self._done.set()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(
        self, payload: bytes, info: dict[str, Any], best: bool, best_payload: bytes | None
    ) -> None:
        """Hand over serialised checkpoints; returns once the previous save is done."""
        self.wait()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="checkpoint", daemon=True)
            self._thread.start()
        self._done.clear()
        self._jobs.put((self.ckpt_dir, payload, info, self.policy, best, best_payload))

    def wait(self) -> None:
        self._done.wait()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                commit(*job)
            except BaseException as e:  # handed to the training thread by wait()
                self._error = e
            finally:
                self._done.set()


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one checkpoint after checking its size and sha256 against the manifest
    (last.pt and best.pt are checked against the files the manifest says they are)."""
    manifest = read_manifest(path.parent)
    name = {"last.pt": manifest.get("last"), "best.pt": manifest.get("best")}.get(
        path.name, path.name
    )
    entry = manifest["files"].get(name)
    if entry is None or not path.is_file():
        raise CheckpointError(f"{path}: not a committed checkpoint (not in {MANIFEST})")
    payload = path.read_bytes()
    if len(payload) != entry["size"] or hashlib.sha256(payload).hexdigest() != entry["sha256"]:
        raise CheckpointError(
            f"{path}: size or sha256 differs from {MANIFEST}: the file is truncated or corrupt"
        )
    try:
        ckpt = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a trainlab checkpoint ({e.__class__.__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"{path}: not a trainlab checkpoint of schema {SCHEMA_VERSION}")
    return ckpt


def load_latest(ckpt_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The newest resumable checkpoint that verifies, and its manifest entry. A bad one is
    reported by name and the next older one is tried; if none is good, CheckpointError says
    why, and nothing is started over."""
    manifest = read_manifest(ckpt_dir)
    entries = [(n, e) for n, e in manifest["files"].items() if e.get("resumable", True)]
    entries.sort(key=lambda item: item[1]["step"], reverse=True)
    problems = []
    for name, entry in entries:
        try:
            ckpt = load(ckpt_dir / name)
        except CheckpointError as e:
            problems.append(str(e))
            log.warning(f"checkpoint refused: {e}; trying an older one")
            continue
        if problems:
            log.warning(f"resuming from the older {name} (step {entry['step']})")
        return ckpt, entry | {"name": name}
    reasons = "; ".join(problems) if problems else f"{MANIFEST} lists none"
    raise CheckpointError(
        f"{ckpt_dir}: no good checkpoint to resume from ({reasons}). Nothing was started over; "
        "start a new run, or restore a checkpoint file from a backup"
    )


def read_manifest(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        return {"schema_version": SCHEMA_VERSION, "files": {}}
    try:
        manifest = json.loads(path.read_text())
        assert isinstance(manifest.get("files"), dict)
    except (ValueError, AssertionError) as e:
        raise CheckpointError(
            f"{path}: unreadable ({e}); the checkpoints cannot be verified"
        ) from e
    return manifest


def has_checkpoint(ckpt_dir: Path) -> bool:
    return any(e.get("resumable", True) for e in read_manifest(ckpt_dir)["files"].values())


# The files a checkpoint folder holds; sweep_temp_files removes only temp files of these.
FILES = ("step_*.pt", "best_step_*.pt", "last.pt", "best.pt", MANIFEST)


def sweep_temp_files(ckpt_dir: Path) -> list[Path]:
    """Remove the temp files an interrupted checkpoint write left (.<name>.<random>.tmp)."""
    return rundir.sweep_temp_files(ckpt_dir, FILES)


def _write(path: Path, payload: bytes, info: dict[str, Any], best: bool) -> dict[str, Any]:
    try:
        write_atomic(path, payload, sync_folder=False)  # the manifest's commit syncs the folder
    except OSError as e:
        raise CheckpointSaveError(
            f"could not write {path} ({e.strerror or e}); the checkpoints written before it are "
            f"intact{' (disk full?)' if e.errno in (errno.ENOSPC, errno.EFBIG) else ''}"
        ) from e
    entry = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload), **info}
    return entry | {"best": True} if best else entry


def _point(alias: Path, target: str) -> None:
    """Atomically make `alias` (last.pt, best.pt) the file `target` in the same folder: a hard
    link, so no bytes are written twice; a copy where the filesystem has no hard links."""
    tmp = alias.with_name(f".{alias.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(alias.with_name(target), tmp)
        os.replace(tmp, alias)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
            raise CheckpointSaveError(f"could not update {alias} ({e.strerror or e})") from e
        write_atomic(alias, alias.with_name(target).read_bytes())


def _write_manifest(ckpt_dir: Path, manifest: dict[str, Any]) -> None:
    try:
        write_atomic(ckpt_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as e:
        raise CheckpointSaveError(
            f"could not commit {ckpt_dir / MANIFEST} ({e.strerror or e}); the checkpoints "
            "committed before stay the ones loaded"
        ) from e


def _rotated_out(manifest: dict[str, Any], policy: Policy) -> list[str]:
    """What the policy no longer keeps: never what last or best name, and only files the
    manifest lists (anything else in the folder is not ours)."""
    files = manifest["files"]
    by_step = sorted(files, key=lambda n: files[n]["step"], reverse=True)
    resumable = [n for n in by_step if files[n].get("resumable", True)]
    best = [n for n in by_step if files[n].get("best")]
    keep = {manifest.get("last"), manifest.get("best")}
    keep |= set(resumable[: max(policy.keep_last, 2)]) | set(best[: policy.top_k])
    return [n for n in files if n not in keep]
