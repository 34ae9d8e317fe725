"""What a run leaves once fit returns: the test of its best checkpoint, metrics.json, the
summary in TensorBoard and metrics.csv (hparams, test scalars, the confusion matrix), and the
summary printed at the end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from trainlab import checkpoint, checkpoint_files, distributed, metrics, rundir, tasks
from trainlab.config import TrainerConfig, monitor_mode
from trainlab.console import per_label
from trainlab.data import Data
from trainlab.loop import evaluation_of
from trainlab.metrics import Events
from trainlab.parts import LoopState, Parts, batches, eval_weights

log = logging.getLogger(__name__)


def test(
    cfg: DictConfig,
    trainer: TrainerConfig,
    ckpt_dir: Path,
    parts: Parts,
    data: Data,
    state: LoopState,
    world: distributed.World,
) -> dict[str, Any]:
    """Test the best checkpoint that exists, once; returns what metrics.json will hold. Under
    DDP rank 0 reads best.pt and hands its weights to the others (no shared disk needed), the
    ranks test a share of the batches each, and the sums are added up."""
    best = None
    if world.main:
        best = _best_checkpoint(ckpt_dir, state)
    best_step, weights = distributed.broadcast_object(best)
    checkpoint.unwrap(parts.model).load_state_dict(weights)
    test_batches = batches(data.test, "test", trainer, cfg.seed, data, world)
    # best.pt already holds the weights that were validated (the ASGD average, if asked for).
    parts.eval_with_average = False
    model = distributed.inner(parts.model)
    counts = None
    if trainer.tensorboard.confusion_matrix:
        counts = tasks.new_confusion(parts.task, data.device)
    with eval_weights(parts):
        test = evaluation_of(parts.step)(
            model, test_batches, parts.loss_fn, parts.task, "test", parts.precision, counts
        )
    confusion = None if counts is None else distributed.all_reduce_(counts).cpu().tolist()
    # The record of the checkpoint that was tested: the best validation, unless its save
    # failed (trainer.checkpoint.on_error=continue); then the newest best that was written.
    best_record = next(r for r in state.history if r["step"] == best_step)
    validated = [r for r in state.history if any(k.startswith("val/") for k in r)]
    return {
        "monitor": trainer.monitor,
        "mode": monitor_mode(trainer),
        "best": best_record,
        "final": validated[-1],
        "test": test,
        "epochs": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "train_s": state.train_s,
        "checkpoint_s": state.checkpoint_s,
        "parameters": sum(p.numel() for p in checkpoint.unwrap(parts.model).parameters()),
        "test_confusion_matrix": confusion,
    }


def _best_checkpoint(ckpt_dir: Path, state: LoopState) -> tuple[int, dict[str, Any]]:
    """(step, model weights) of best.pt as the manifest commits it. It is the best validation
    unless that save failed with trainer.checkpoint.on_error=continue: then it is an older
    one, and the run says so rather than test one epoch and report another."""
    best = checkpoint_files.read_manifest(ckpt_dir).get("best")
    if best is None:
        raise checkpoint_files.CheckpointSaveError(
            f"{ckpt_dir}: no best checkpoint was written (every save failed, see the warnings "
            "above), so there are no validated weights to test"
        )
    saved = checkpoint_files.load(ckpt_dir / "best.pt", map_location="cpu")
    step = saved["loop"]["step"]
    if step != state.best_step:
        log.warning(
            f"the best validation was at step {state.best_step} (epoch {state.best_epoch()}) but "
            f"its checkpoint was not written; testing best.pt = {best} from step {step}"
        )
    return step, saved["model"]


def record_results(
    cfg: DictConfig,
    run_dir: Path,
    results: dict[str, Any],
    record: dict[str, Any],
    events: Events,
    state: LoopState,
    world: distributed.World,
) -> None:
    """metrics.json, then the run's summary in TensorBoard (hparams, test scalars)."""
    if world.main:
        rundir.write_json(run_dir / "metrics.json", results)
    best_record, validated = results["best"], results["final"]
    monitor = results["monitor"]
    scalars = {f"best/{monitor}": best_record[monitor]}
    scalars |= {f"final/{k}": v for k, v in validated.items() if k.startswith("val/")}
    scalars |= results["test"]
    hparam_values = metrics.hparams(cfg, record["choices"], record["overrides"])
    # One step past training: a resume purges from its checkpoint's step + 1, so a summary
    # written by an attempt that crashed while testing never shows up twice.
    metrics.log_hparams(events, hparam_values, scalars, state.step + 1)
    confusion = results["test_confusion_matrix"]
    if confusion is not None:
        labels = [str(i) for i in range(len(confusion))]
        metrics.log_confusion(events, torch.tensor(confusion), labels, state.step + 1)


def print_summary(run_dir: Path, results: dict[str, Any], world: distributed.World) -> None:
    best, monitor = results["best"], results["monitor"]
    if world.distributed:  # every rank: the numbers it decided on, which must be the same
        shown = {monitor: best[monitor]} | results["test"]
        values = "  ".join(f"{k} {v!r}" for k, v in shown.items())
        print(f"[rank {world.rank}/{world.size}] best epoch {best['epoch']}  {values}", flush=True)
    test = "  ".join(f"{k} {v:.4f}" for k, v in results["test"].items() if not per_label(k))
    stopped = ", stopped early" if results["stopped_early"] else ""
    log.info("summary")
    log.info(
        f"  best:        epoch {best['epoch']} of {results['epochs']}{stopped}, "
        f"{monitor} {best[monitor]:.4f} (checkpoints/best.pt)"
    )
    log.info(f"  test:        {test}")
    log.info(
        f"  time:        {results['wall_s']:.1f}s in all, {results['train_s']:.1f}s training "
        f"({results['steps']} steps)"
    )
    log.info(f"  outputs:     {run_dir}")
    log.info(f"  tensorboard: trainlab tensorboard {run_dir}")
