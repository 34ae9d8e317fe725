"""The state round trip: what a checkpoint saves and what resume restores, side by side.

stateful(parts) names every part that has state; snapshot() builds the one checkpoint dict
from them, the loop state, the random streams and the run's context; restore() undoes exactly
that. Adding a stateful part (an EMA, a second model) is one entry in stateful(), and
tests/test_checkpoint.py's round trip fails until restore brings it back. The files
themselves (atomic write, manifest, rotation) are checkpoint_files.py's.

The dict holds tensors and plain containers only, so torch.load(weights_only=True) reads it
with no allowlist.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from trainlab import distributed, tasks
from trainlab.checkpoint_files import SCHEMA_VERSION, Saver, serialize
from trainlab.errors import Diverged
from trainlab.parts import LoopState, Parts, eval_weights

log = logging.getLogger(__name__)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def stateful(parts: Parts) -> dict[str, Stateful | None]:
    """Every part a checkpoint holds, by name (None: this run has no such part)."""
    return {
        "model": unwrap(parts.model),  # the plain module: loadable without DDP or compile
        "optimizer": parts.optimizer,
        "scheduler": parts.scheduler,
        "grad_scaler": parts.precision.scaler,
        **parts.extra,  # what the run's step declared (steps.Step.extra_state), by its names
    }


def snapshot(
    parts: Parts,
    state: LoopState,
    context: dict[str, Any],
    sums: dict[str, tasks.Sums] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict. `sums` are the epoch's and the log
    interval's running sums of a save in the middle of an epoch. `context` holds the resolved
    config as YAML text (one string pickles in microseconds where a nested dict takes
    milliseconds, at every save) and the environment. Under DDP every rank must call this:
    it gathers each rank's random streams and running sums, for an exact resume of each."""
    loop = state.state_dict()
    if sums is not None:
        partial = {k: tasks.state(parts.task, v) for k, v in sums.items()}
        # Never save what a NaN step may have touched (on any rank).
        bad = not parts.check_every_step and any(
            not math.isfinite(float(part["loss"])) for part in partial.values()
        )
        if distributed.any_rank(bad, parts.train.device):
            raise Diverged(
                f"train/loss became NaN or Inf before step {state.step}; the last good "
                "checkpoint is kept"
            )
        loop["partial_sums"] = partial
    ranks = None
    if distributed.active():
        ranks = distributed.gather_objects(
            {"rng": capture_rng(), "partial_sums": loop["partial_sums"]}
        )
    parts_state = {
        name: part.state_dict() if part is not None else None
        for name, part in stateful(parts).items()
    }
    return {
        "schema_version": SCHEMA_VERSION,
        **parts_state,
        "loop": loop,
        "rng": capture_rng(),
        "config": context["config"],
        "environment": context["environment"],
        "ranks": ranks,  # rank 0's are also the top-level ones
    }


def restore(
    saved: dict[str, Any], parts: Parts, world: distributed.World
) -> tuple[LoopState, dict[str, Any] | None]:
    """Load every stateful part from `saved` and return the loop state and this rank's random
    streams. The streams are not restored here: the caller restores them with restore_rng as
    the very last thing before training continues, so that nothing in between draws from
    them. A part this run has and the checkpoint lacks (fp16 allowed on a resumed fp32 run)
    starts fresh; one the checkpoint has and this run lacks is left behind."""
    for name, part in stateful(parts).items():
        if part is not None and saved.get(name) is not None:
            part.load_state_dict(saved[name])
    state = LoopState.from_state_dict(saved["loop"])
    rng, state.partial_sums = _rank_state(saved, world)
    return state, rng


def _rank_state(saved: dict[str, Any], world: distributed.World) -> tuple[Any, Any]:
    """This rank's random streams and mid-epoch running sums. With the world size it was saved
    with, each rank gets its own back; after an allowed change of trainer.devices rank 0
    carries every saved rank's sums and the new ranks keep fresh seeds."""
    ranks = saved["ranks"] or [{"rng": saved["rng"], "partial_sums": saved["loop"]["partial_sums"]}]
    if len(ranks) == world.size:
        return ranks[world.rank]["rng"], ranks[world.rank]["partial_sums"]
    rng = ranks[world.rank]["rng"] if world.rank < len(ranks) else None
    if not world.main or ranks[0]["partial_sums"] is None:
        return rng, None
    combined = {
        part: {key: sum(r["partial_sums"][part][key] for r in ranks) for key in sums}
        for part, sums in ranks[0]["partial_sums"].items()
    }
    return rng, combined


def save(
    saver: Saver,
    parts: Parts,
    state: LoopState,
    metric: float | None,
    best: bool = False,
    sums: dict[str, tasks.Sums] | None = None,
) -> None:
    """Snapshot everything and hand it to the writer (best.pt too if `best`: the weights that
    were validated, ASGD's average where asked for). Every rank calls this at the same step.
    A failed save stops the run or, with on_error=continue, is reported and training goes on
    (the previous checkpoints are intact either way)."""
    started = time.perf_counter()
    snap = snapshot(parts, state, saver.context, sums)
    if saver.writer is not None:  # rank 0
        best_payload = None
        if best and parts.eval_with_average:
            with eval_weights(parts):
                best_payload = serialize(snap | {"model": unwrap(parts.model).state_dict()})
        payload = serialize(snap)  # the snapshot; the files are written meanwhile
        info = {
            "epoch": state.epoch,
            "step": state.step,
            "batch_in_epoch": state.batch_in_epoch,
            "metric": metric,
        }
        saver.submit(payload, info, best, best_payload)
    state.checkpoint_s += time.perf_counter() - started


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
