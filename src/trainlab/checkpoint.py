"""Checkpoints: the one dict a run saves, how it is written (atomically, hashed in a manifest)
and how it is read back. What is saved and what resume restores sit side by side here.

The dict holds tensors and plain containers only, so torch.load(weights_only=True) reads it
with no allowlist; a file that is anything else is refused, never unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from trainlab.errors import TrainlabError
from trainlab.rundir import write_atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class CheckpointError(TrainlabError):
    """A checkpoint is missing, corrupt, or not one of ours."""


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
    loop: dict[str, Any],
    config: dict[str, Any],
    environment: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loop": loop,
        "rng": capture_rng(),
        "config": config,
        "environment": environment,
    }


def restore(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
) -> dict[str, Any]:
    """Load every stateful part from `ckpt` and return the loop state. RNG last: nothing
    between here and the next training step may draw random numbers."""
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    restore_rng(ckpt["rng"])
    return ckpt["loop"]


def capture_rng() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(mt_state), "gauss": gauss},
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


# ---- how it is written and read ----


def save(ckpt_dir: Path, names: list[str], state: dict[str, Any], info: dict[str, Any]) -> None:
    """Write `state` under each of `names` (e.g. last.pt and best.pt), then commit the manifest.

    Serialised once; each file goes to a temp file in the same folder, is fsynced and renamed
    over the old one, and the folder is fsynced. The manifest, written last, is the commit
    marker: a file whose hash it does not record is never loaded.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    entry = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload), **info}
    for name in names:
        write_atomic(ckpt_dir / name, payload)
    manifest = read_manifest(ckpt_dir)
    manifest["files"].update({name: entry for name in names})
    write_atomic(ckpt_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint after checking its size and sha256 against the manifest."""
    entry = read_manifest(path.parent)["files"].get(path.name)
    if entry is None or not path.is_file():
        raise CheckpointError(f"{path}: no committed checkpoint of that name (see {MANIFEST})")
    payload = path.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    if len(payload) != entry["size"] or digest != entry["sha256"]:
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


def read_manifest(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        return {"schema_version": SCHEMA_VERSION, "files": {}}
    return json.loads(path.read_text())
