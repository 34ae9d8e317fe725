"""A run's life: set up (build everything; nothing is written), accept (config.yaml,
run.json, status running), fit, test and record, summary; every outcome after the accept
ends in status.json.

`trainlab train` (each Hydra job) and `trainlab resume` both end in run(). Everything is
built, in order, before the first file is written, so a config or data error leaves no folder
behind.
"""

from __future__ import annotations

import logging
import platform
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import trainlab
from trainlab import (
    checkpoint,
    checkpoint_files,
    config,
    continuation,
    distributed,
    lock,
    metrics,
    results,
    runconfig,
    rundir,
    studies,
)
from trainlab.checkpoint_files import Saver
from trainlab.config import ProgressMode, TrainerConfig
from trainlab.console import console_and_log_file
from trainlab.continuation import Resume
from trainlab.data import Data, Shard, build_data, epoch_seed
from trainlab.errors import Diverged, TrainlabError, first_line
from trainlab.loop import fit
from trainlab.parts import LoopState, Parts, build_parts, seed_everything, setup_torch
from trainlab.preflight import preflight
from trainlab.signals import Interrupted, graceful_stop

log = logging.getLogger(__name__)


def resume(run_dir: Path, overrides: list[str], allow: list[str], argv: list[str]) -> int:
    """`trainlab resume RUN_DIR [key=value ...]`: continue from the run's newest good
    checkpoint, in place. The stored config is the source of truth; overrides may extend or
    re-pace the run, anything else needs --allow-change KEY."""
    try:
        stored = runconfig.load_run_config(run_dir)
        cfg = runconfig.apply_overrides(stored, overrides)
        runconfig.absolute_paths(cfg)  # an override's relative path means the folder it is typed in
        config.check(cfg)
        found = continuation.changes(stored, cfg)
        continuation.check_resume_changes(found, allow)
        launched = distributed.launched_world().size
        continuation.check_world(config.trainer_of(cfg), launched, run_dir)
        if distributed.launched_world().main:
            lock.own(run_dir, argv)
        if rundir.status_of(run_dir).get("status") == "completed" and not found:
            print(f"{run_dir}: the run completed already; nothing to resume")
            return 0
        with graceful_stop():
            run(cfg, run_dir, launch=None, resume=continuation.of(run_dir, cfg, allow), argv=argv)
    except TrainlabError as e:
        return rundir.report(e)
    finally:
        lock.disown(run_dir)
        distributed.teardown()
    return 0


@dataclass
class SetUp:
    """What set-up built and read, before anything is written."""

    trainer: TrainerConfig
    world: distributed.World
    data: Data
    parts: Parts
    state: LoopState
    environment: dict[str, Any]
    earlier: dict[str, Any] | None = None  # run.json as an earlier attempt left it
    rng: dict[str, Any] | None = None  # this rank's saved random streams, restored last
    resumed_from: dict[str, Any] | None = None  # the checkpoint's manifest entry
    notes: list[str] | None = None  # what an allowed change of environment changes


def run(
    cfg: DictConfig,
    run_dir: Path,
    launch: dict[str, Any] | None,
    resume: Resume | None = None,
    multirun: bool = False,
    argv: list[str] | None = None,
    started: float | None = None,
    pruning: studies.Pruning | None = None,
) -> dict[str, Any]:
    """Train, test and record one run in `run_dir`; returns what metrics.json holds. Under
    torchrun every rank runs this; rank 0 alone writes the folder, and holds its lock.
    `started`: this attempt's start (perf_counter; default: the process's); `pruning`: a
    sweep's trial reporting to its study."""
    argv = list(sys.argv if argv is None else argv)
    started = trainlab.STARTED if started is None else started
    # A folder with a run in it but no checkpoint (stopped before its first save) starts over
    # in place.
    in_place = resume is None and (run_dir / "config.yaml").is_file()
    rank = distributed.launched_world().rank
    # Rank 0 owns the folder (a no-op where the callback or `resume` took it already); the
    # signal handlers stay from start-up to the end (nested in the CLI's, if it has them).
    with (
        lock.owning(run_dir, needed=rank == 0),
        graceful_stop() as stop,
        console_and_log_file(run_dir / "train.log", rank) as start_log_file,
        ExitStack() as cleanup,
    ):
        # ---- set up: build everything; nothing is written yet ----
        try:
            s = _set_up(cfg, run_dir, resume)
        except (TrainlabError, KeyboardInterrupt) as e:
            if rank == 0 and multirun:
                record_status(run_dir, "failed", str(e))
            elif rank == 0 and resume is None and not in_place:
                rundir.release(run_dir)  # leave no trace of a rejected run
            if isinstance(e, KeyboardInterrupt):  # Ctrl-C twice in start-up: nothing written
                raise SystemExit(128 + signal.SIGINT) from None
            raise
        trainer, world, state = s.trainer, s.world, s.state

        # ---- accept: from here on rank 0 writes its folder ----
        try:
            if world.main:
                record = _write_records(cfg, run_dir, launch, resume, s, argv, started)
            else:
                record = {"choices": (launch or {}).get("choices", {}), "overrides": []}
            start_log_file()
            if world.main:
                rundir.write_status(run_dir, "running")
        except TrainlabError as e:  # a record could not be written (disk full, read-only)
            if world.main:
                record_status(run_dir, "failed", str(e))
            raise
        _log_start(trainer, run_dir, s)
        # fast_dev_run keeps no checkpoints: they go to a temporary folder, gone at the end.
        ckpt_dir = run_dir / "checkpoints"
        if trainer.fast_dev_run:
            ckpt_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="trainlab-")))
        # Drop events an earlier attempt wrote after this checkpoint (points at its own step
        # were logged before it was saved and stay); a fresh start in place drops them all.
        purge = state.step + 1 if resume is not None else (0 if in_place else None)
        events = metrics.open_events(run_dir, purge, world.main and not trainer.fast_dev_run)

        # ---- fit, test and record: every outcome ends in status.json ----
        try:
            # A signal during start-up: the run is recorded (config, run.json) but nothing
            # was trained; `trainlab resume` starts it over in place.
            stop.check(saved=s.resumed_from is not None)
            if resume is None and world.main:
                metrics.log_config(events, cfg)
                _log_inputs(trainer, s.parts, events)
            context = {"config": OmegaConf.to_yaml(cfg, resolve=True), "environment": s.environment}
            saver = Saver(ckpt_dir, trainer.checkpoint, context, world.main)
            if s.rng is not None:
                checkpoint.restore_rng(s.rng)  # the last thing before training continues
            progress = trainer.progress if world.main else ProgressMode.none
            earlier_s = state.wall_s  # earlier attempts' seconds, up to their last checkpoint
            state = fit(trainer, s.parts, state, events, saver, stop, progress, started, pruning)
            outcome = results.test(cfg, trainer, ckpt_dir, s.parts, s.data, state, world)
            outcome["wall_s"] = earlier_s + time.perf_counter() - started
            # A signal during the test: the last checkpoint is the final one, so a resume
            # trains nothing and tests again.
            stop.check()
            results.record_results(cfg, run_dir, outcome, record, events, state, world)
            if world.main:
                rundir.write_status(run_dir, "completed")
        except Interrupted as e:
            record_status(run_dir, "interrupted", signal.Signals(e.signum).name, world.main)
            has = checkpoint_files.has_checkpoint(ckpt_dir)
            log.info(f"{e}; `trainlab resume {run_dir}` {'continues' if has else 'starts it over'}")
            events.close()
            e.hand_on()  # on a SLURM job: submitit requeues it
            raise SystemExit(e.exit_code) from None
        except Diverged as e:
            record_status(run_dir, "diverged", str(e), world.main)
            raise
        except studies.Pruned as e:
            record_status(run_dir, "pruned", str(e), world.main)
            raise
        except KeyboardInterrupt:
            why = "SIGINT (no checkpoint: stopped at once)"
            record_status(run_dir, "interrupted", why, world.main)
            log.info(f"interrupted; continue from the last checkpoint: trainlab resume {run_dir}")
            raise SystemExit(128 + signal.SIGINT) from None
        except BaseException as e:
            why = rundir.message_of(e) if isinstance(e, TrainlabError) else first_line(e)
            if not isinstance(e, TrainlabError):
                why = f"{e.__class__.__name__}: {why}"
            record_status(run_dir, "failed", why, world.main)
            raise
        finally:
            events.close()
        results.print_summary(run_dir, outcome, world)
        return outcome


# A tag that keeps the per-rank seeds apart from the (seed, epoch) data-order streams.
RANK_STREAM = 0x5EED


def _set_up(cfg: DictConfig, run_dir: Path, resume: Resume | None) -> SetUp:
    """Build everything in order and, on resume, restore it from the newest good checkpoint;
    nothing is written (a damaged run.json is refused here, not replaced later)."""
    trainer = config.trainer_of(cfg)
    setup_torch(trainer)
    world, device = distributed.setup(trainer.devices, trainer.accelerator)
    run_json = run_dir / "run.json"
    earlier = rundir.read_json(run_json) if run_json.is_file() else None
    # A resumed run standardizes its inputs with the statistics it started with.
    stats = ((earlier or {}).get("data") or {}).get("standardize") if resume else None
    data = build_data(cfg.dataset, device, stats, cfg.task)
    config.check(cfg)  # again: the keys the data filled in (dataspec.py) meet the other rules
    parts = build_parts(cfg, trainer, data, device, world)
    preflight(cfg, parts)
    if world.rank > 0:  # the same initial weights, but each rank its own dropout masks
        seed_everything(epoch_seed(cfg.seed, RANK_STREAM, world.rank) % 2**32)
    parts.model = distributed.wrap(parts.model, device)
    s = SetUp(trainer, world, data, parts, LoopState(), _environment(trainer, device, world))
    s.earlier = earlier if world.main else None
    if resume is not None:
        ckpt_dir = run_dir / "checkpoints"
        if world.main:
            checkpoint_files.sweep_temp_files(ckpt_dir)
        saved, s.resumed_from = checkpoint_files.load_latest(ckpt_dir)
        s.state, s.rng = checkpoint.restore(saved, parts, world)
        s.notes = continuation.check_environment(saved["environment"], s.environment, resume.allow)
        continuation.check_length(trainer, s.state.epoch, s.state.step)
        continuation.apply_optimizer_changes(parts, resume.changes)
    return s


def _log_start(trainer: TrainerConfig, run_dir: Path, s: SetUp) -> None:
    log.info(f"run folder: {run_dir}")
    for note in s.notes or []:
        log.warning(note)
    if s.world.distributed:
        log.info(Shard(s.world.rank, s.world.size).describe(len(s.data.train), trainer.batch_size))
    if s.resumed_from is not None:
        state = s.state
        log.info(
            f"resuming from {s.resumed_from['name']}: epoch {state.epoch}, step {state.step}"
            + (f", batch {state.batch_in_epoch} of the epoch" if state.batch_in_epoch else "")
        )
    if trainer.fast_dev_run:
        log.info("trainer.fast_dev_run: one batch of each split; no checkpoints or events kept")


def record_status(run_dir: Path, status: str, reason: str, main: bool = True) -> None:
    """status.json on the way out; if even that cannot be written (disk full), say so."""
    if not main:
        return
    try:
        rundir.write_status(run_dir, status, reason)
    except TrainlabError as e:
        log.error(f"{e}; the run ended {status} ({reason})")


def _write_records(
    cfg: DictConfig,
    run_dir: Path,
    launch: dict[str, Any] | None,
    resume: Resume | None,
    s: SetUp,
    argv: list[str],
    started: float,
) -> dict[str, Any]:
    """config.yaml (new, or changed by a resume) and run.json (new, or one more attempt)."""
    checkpoint_files.sweep_temp_files(run_dir / "checkpoints")
    rundir.sweep_temp_files(run_dir, rundir.RECORDS)
    if resume is None or resume.changes:
        rundir.write_record(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if s.earlier is None:
        record = rundir.run_record(cfg.name, cfg.seed, launch or {}, s.environment, argv, started)
        # What predict names the outputs by and feeds the model, as trained (DESIGN 9).
        data = s.data
        record["data"] = {
            "classes": data.classes, "features": data.features, "standardize": data.standardize,
        }  # fmt: skip
    else:
        record = s.earlier
        attempt = rundir.launch_record(argv, started)
        if s.resumed_from is not None:
            attempt["resumed_from"] = s.resumed_from["name"]
        else:
            attempt["started_over"] = "no checkpoint yet: trained from the start, in place"
        if resume is not None and resume.changes:
            attempt["changed"] = {k: list(v) for k, v in resume.changes.items()}
        if s.notes:
            attempt["notes"] = s.notes
        record["attempts"].append(attempt)
    rundir.write_json(run_dir / "run.json", record)
    return record


def _log_inputs(trainer: TrainerConfig, parts: Parts, events: metrics.Events) -> None:
    """What TensorBoard shows of the model and its inputs at a fresh start."""
    tb = trainer.tensorboard
    if not (tb.graph or tb.example_images):
        return
    x, _ = parts.train.sample(max(tb.example_images, 2))
    if tb.graph:
        metrics.log_graph(events, checkpoint.unwrap(parts.model), x[:2])
    if tb.example_images and x.dim() == 4:
        metrics.log_examples(events, x[: tb.example_images])


def _environment(
    trainer: TrainerConfig, device: torch.device, world: distributed.World
) -> dict[str, Any]:
    if device.type == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        name = f"cpu ({platform.processor() or platform.machine()})"
    return {
        "torch": str(torch.__version__),  # TorchVersion is not a plain str: weights_only refuses it
        "num_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": name,
        "precision": str(trainer.precision),  # a plain str: weights_only refuses an Enum
        "world_size": world.size,
        "deterministic": trainer.deterministic,
        "tf32": trainer.tf32 and device.type == "cuda",
    }
