"""One Hydra job of `trainlab train`: the run folder Hydra gave it (rank 0's, under torchrun),
its lock, what a job in a folder that holds a run does (continuation.decide), a sweep's trial
reporting to its study, and a sweep's semantics: a failing job records why and returns NaN, so
it is a row of the summary (and a failed Optuna trial), not the end of the sweep. The run itself
is train.run."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from trainlab import config, continuation, distributed, lock, runconfig, rundir, studies
from trainlab.errors import TrainlabError
from trainlab.train import record_status, run

log = logging.getLogger(__name__)


def hydra_task(cfg: DictConfig) -> float:
    started = time.perf_counter()  # this job's start: its clock (a sweep runs many a process)
    """The body of each `trainlab train` job; returns the best monitored value (what a
    sweeper optimises). In a sweep a failing job records its status and returns NaN: it is a
    row of the sweep's summary (and a failed Optuna trial), not the end of the sweep."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    runconfig.absolute_paths(cfg)
    parallel = _parallel_jobs(hydra_cfg.launcher)
    if cfg.trainer.num_threads is None and parallel > 1:
        # Jobs running side by side share the cores instead of each taking all of them.
        cfg.trainer.num_threads = max(1, (os.cpu_count() or 1) // parallel)
    launch = {
        "overrides": list(hydra_cfg.overrides.task),
        "choices": {
            k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")
        },
    }
    try:
        if distributed.launched_world().distributed:
            run_dir = _join_world(cfg, run_dir, release=not multirun)
        if multirun:
            # The sweep checked what its jobs share; this job's own values are checked here.
            config.check(cfg)
        if distributed.launched_world().main:
            lock.own(run_dir)  # a single run's callback took it already; a sweep job's here
        resume = continuation.decide(cfg, run_dir, multirun)
        pruning = studies.Pruning.of_job(
            hydra_cfg, cfg.trainer.monitor, distributed.launched_world().main
        )
        results = run(cfg, run_dir, launch, resume, multirun, started=started if multirun else None,
                      pruning=pruning)  # fmt: skip
    except studies.Pruned as e:
        log.info(f"job {run_dir.name}: pruned ({e}); its checkpoints are kept")
        return math.nan
    except SystemExit:
        if multirun and distributed.launched_world().main:
            # A stopped job ends the sweep before Hydra's on_job_end: the summary has it too.
            from trainlab import sweep

            objectives = sweep.objectives_of(hydra_cfg, cfg.trainer.monitor)
            sweep.write_summary(Path(hydra_cfg.sweep.dir), *objectives)
        raise
    except TrainlabError as e:
        if not multirun:
            raise SystemExit(rundir.report(e)) from None
        ours = not isinstance(e, lock.FolderInUse)  # another process's folder: touch nothing
        if ours and distributed.launched_world().main and not (run_dir / "status.json").is_file():
            record_status(run_dir, "failed", rundir.message_of(e))
        print(f"error: job {run_dir.name}: {rundir.message_of(e)}", file=sys.stderr)
        return math.nan
    except Exception:
        if not multirun:
            raise
        traceback.print_exc()  # an internal error: the whole story, but the sweep goes on
        return math.nan
    finally:
        lock.disown(run_dir)
        distributed.teardown()
    return results["best"].get(cfg.trainer.monitor, math.nan)


def _join_world(cfg: DictConfig, run_dir: Path, release: bool) -> Path:
    """Under torchrun: join the process group and return rank 0's run folder (the other ranks'
    Hydra made none, see rundir.RunFolderCallback). A rejected world leaves no folder."""
    try:
        distributed.setup(cfg.trainer.devices, cfg.trainer.accelerator)
    except TrainlabError:
        if release and distributed.launched_world().main:
            rundir.release(run_dir)
        raise
    return Path(distributed.broadcast_object(str(run_dir)))


def _parallel_jobs(launcher: DictConfig) -> int:
    """Jobs a launcher runs at once on this machine (joblib's n_jobs; -1 = one per core)."""
    n = launcher.get("n_jobs") if launcher is not None else None
    if not isinstance(n, int):
        return 1
    return (os.cpu_count() or 1) + 1 + n if n < 0 else n
