"""One run from start to finish: setup -> fit -> test -> record -> clean up.

`trainlab train` (each Hydra job) and `trainlab resume` both end in run(). Everything is
built, in order, before the first file is written, so a config or data error leaves no folder
behind; after that every outcome ends in status.json.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainlab import checkpoint, config, metrics, rundir
from trainlab.build import build_loss, build_model, build_optimizer, build_scheduler
from trainlab.data import Data, build_data, make_batches
from trainlab.errors import ConfigError, Diverged, TrainlabError, first_line
from trainlab.loop import Checkpointing, LoopState, Parts, eval_weights, evaluate, fit
from trainlab.metrics import per_label
from trainlab.preflight import preflight
from trainlab.tasks import Task

log = logging.getLogger(__name__)


def hydra_task(cfg: DictConfig) -> float | None:
    """The body of each `trainlab train` job; returns the best monitored value (for sweepers)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    # paths.* are relative to the launch folder; config.yaml must say the same thing to a
    # `trainlab resume` started anywhere else.
    for key in cfg.paths:
        cfg.paths[key] = str(Path(cfg.paths[key]).resolve())
    launch = {
        "overrides": list(hydra_cfg.overrides.task),
        "choices": {
            k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")
        },
    }
    try:
        results = run(cfg, run_dir, launch=launch, multirun=multirun)
    except TrainlabError as e:
        if multirun:
            raise  # Hydra records the job as failed and goes on with the sweep
        raise SystemExit(rundir.report(e)) from None
    return results["best"].get(cfg.trainer.monitor)


def resume(run_dir: Path, argv: list[str]) -> int:
    """`trainlab resume RUN_DIR`: continue from the run's last checkpoint, in place."""
    try:
        cfg = config.load_run_config(run_dir)
        config.check(cfg)
        status_file = run_dir / "status.json"
        status = rundir.read_json(status_file) if status_file.is_file() else {}
        if status.get("status") == "completed":
            print(f"{run_dir}: the run completed already; nothing to resume")
            return 0
        run(cfg, run_dir, launch=None, resume=True, argv=argv)
    except TrainlabError as e:
        return rundir.report(e)
    return 0


def run(
    cfg: DictConfig,
    run_dir: Path,
    launch: dict[str, Any] | None,
    resume: bool = False,
    multirun: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Train, test and record one run in `run_dir`; returns what metrics.json holds."""
    argv = list(sys.argv if argv is None else argv)
    with metrics.console_and_log_file(run_dir / "train.log") as start_log_file:
        # ---- setup: build everything; nothing is written yet ----
        try:
            device = _setup_torch(cfg.trainer)
            data = build_data(cfg.dataset, device)
            parts = _build_parts(cfg, data, device)
            preflight(cfg, parts)
            state, environment = LoopState(), _environment(cfg, device)
            if resume:
                state = _restore(run_dir, parts, environment)
        except TrainlabError as e:
            if multirun:
                rundir.write_status(run_dir, "failed", str(e))
            elif not resume:
                rundir.release(run_dir)  # leave no trace of a rejected run
            raise

        # ---- the run is accepted: from here on it writes its folder ----
        if resume:
            record = rundir.read_json(run_dir / "run.json")
            record["attempts"].append(rundir.launch_record(argv))
        else:
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
            record = rundir.run_record(cfg.name, cfg.seed, launch or {}, environment, argv)
        rundir.write_json(run_dir / "run.json", record)
        start_log_file()
        rundir.write_status(run_dir, "running")
        log.info(f"run folder: {run_dir}")
        # Points at the checkpoint's step were logged before it was saved: keep them.
        writer = metrics.open_writer(run_dir / "tb", purge_step=state.step + 1 if resume else None)
        try:
            if not resume:
                metrics.log_config(writer, cfg)
            resolved = OmegaConf.to_container(cfg, resolve=True)
            ckpt = Checkpointing(run_dir / "checkpoints", resolved, environment)
            state = fit(cfg.trainer, parts, state, writer, ckpt)
            results = _test_and_record(cfg, run_dir, parts, data, state, record, writer)
            rundir.write_status(run_dir, "completed")
        except Diverged as e:
            rundir.write_status(run_dir, "diverged", str(e))
            raise
        except KeyboardInterrupt:
            rundir.write_status(run_dir, "interrupted", "SIGINT")
            log.info(f"interrupted; continue with: trainlab resume {run_dir}")
            raise SystemExit(128 + signal.SIGINT) from None
        except BaseException as e:
            rundir.write_status(run_dir, "failed", f"{e.__class__.__name__}: {first_line(e)}")
            raise
        finally:
            writer.close()
        _print_summary(run_dir, results)
        return results


def _setup_torch(trainer: DictConfig) -> torch.device:
    if trainer.num_threads is not None:
        torch.set_num_threads(trainer.num_threads)
    if trainer.deterministic:
        # cuBLAS needs this before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not trainer.deterministic
    if trainer.accelerator == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if trainer.accelerator == "cuda":
        raise ConfigError(
            "trainer.accelerator=cuda: no CUDA device is visible here; use trainer.accelerator=cpu"
            " (or auto)"
        )
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _build_parts(cfg: DictConfig, data: Data, device: torch.device) -> Parts:
    _seed_everything(cfg.seed)  # the model's initial weights come from the run seed
    model = build_model(cfg.model).to(device)
    loss_fn = build_loss(cfg.loss).to(device)
    optimizer = build_optimizer(cfg.optimizer, model)  # after .to(device): it holds the params
    t, workers = cfg.trainer, cfg.dataset.get("num_workers", 0)
    train = make_batches(data.train, t.batch_size, True, cfg.seed, device, workers)
    val = make_batches(data.val, t.batch_size, False, cfg.seed, device, workers)
    interval = cfg.scheduler.interval
    total = _run_length(t, math.ceil(len(train) / t.accumulate_grad_batches), interval)
    scheduler = build_scheduler(cfg.scheduler, optimizer, total, config.monitor_mode(t))
    average = bool(cfg.optimizer.get("eval_with_average", False))
    task = Task.from_config(cfg.dataset)
    return Parts(model, loss_fn, optimizer, scheduler, interval, task, train, val, average)


def _run_length(trainer: DictConfig, steps_per_epoch: int, interval: str) -> int:
    """How many times a scheduler with this interval steps in the whole run."""
    steps = trainer.max_steps or trainer.max_epochs * steps_per_epoch
    return steps if interval == "step" else math.ceil(steps / steps_per_epoch)


def _restore(run_dir: Path, parts: Parts, environment: dict[str, Any]) -> LoopState:
    ckpt = checkpoint.load(run_dir / "checkpoints" / "last.pt", map_location="cpu")
    saved = ckpt["environment"]
    if saved["num_threads"] != torch.get_num_threads():
        # Float reductions split work by thread: the same count keeps resume bitwise exact.
        torch.set_num_threads(saved["num_threads"])
        environment["num_threads"] = saved["num_threads"]
    loop = checkpoint.restore(ckpt, parts.model, parts.optimizer, parts.scheduler)
    state = LoopState(**loop)
    log.info(f"resuming {run_dir} at epoch {state.epoch}, step {state.step}")
    return state


def _environment(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        name = f"cpu ({platform.processor() or platform.machine()})"
    return {
        "torch": str(torch.__version__),  # TorchVersion is not a plain str: weights_only refuses it
        "num_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": name,
        "precision": "fp32",
        "world_size": 1,
        "deterministic": cfg.trainer.deterministic,
    }


def _test_and_record(
    cfg: DictConfig,
    run_dir: Path,
    parts: Parts,
    data: Data,
    state: LoopState,
    record: dict[str, Any],
    writer: Any,
) -> dict[str, Any]:
    """Test the best checkpoint once, then write metrics.json and the hparams."""
    best = checkpoint.load(run_dir / "checkpoints" / "best.pt", map_location="cpu")
    checkpoint.unwrap(parts.model).load_state_dict(best["model"])
    workers = cfg.dataset.get("num_workers", 0)
    device = parts.train.device
    test_batches = make_batches(data.test, cfg.trainer.batch_size, False, cfg.seed, device, workers)
    # best.pt already holds the weights that were validated (the ASGD average, if asked for).
    parts.eval_with_average = False
    with eval_weights(parts):
        test = evaluate(parts.model, test_batches, parts.loss_fn, parts.task, "test")
    best_record = next(r for r in state.history if r["step"] == state.best_step)
    validated = [r for r in state.history if any(k.startswith("val/") for k in r)]
    results = {
        "monitor": cfg.trainer.monitor,
        "mode": config.monitor_mode(cfg.trainer),
        "best": best_record,
        "final": validated[-1],
        "test": test,
        "epochs": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "train_s": state.train_s,
    }
    rundir.write_json(run_dir / "metrics.json", results)
    scalars = {f"best/{cfg.trainer.monitor}": best_record[cfg.trainer.monitor]}
    scalars |= {f"final/{k}": v for k, v in validated[-1].items() if k.startswith("val/")}
    scalars |= test
    hparam_values = metrics.hparams(cfg, record["choices"], record["overrides"])
    metrics.log_hparams(writer, hparam_values, scalars, state.step)
    return results


def _print_summary(run_dir: Path, results: dict[str, Any]) -> None:
    test = "  ".join(f"{k} {v:.4f}" for k, v in results["test"].items() if not per_label(k))
    best, monitor = results["best"], results["monitor"]
    log.info(f"test (best.pt, epoch {best['epoch']}, {monitor} {best[monitor]:.4f}): {test}")
    log.info(
        f"trained {results['epochs']} epochs, {results['steps']} steps in {results['train_s']:.1f}s"
    )
    log.info(f"outputs:     {run_dir}")
    log.info(f"tensorboard: tensorboard --logdir {run_dir / 'tb'}")
