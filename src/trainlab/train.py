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
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import trainlab
from trainlab import checkpoint, config, continuation, distributed, lock, metrics, rundir
from trainlab.build import build_loss, build_model, build_optimizer, build_scheduler
from trainlab.continuation import Resume
from trainlab.data import Data, Shard, Split, build_data, epoch_seed, make_batches
from trainlab.errors import ConfigError, Diverged, TrainlabError, first_line
from trainlab.loop import (
    Checkpointing,
    LoopState,
    Parts,
    Precision,
    eval_weights,
    evaluate,
    fit,
)
from trainlab.metrics import per_label
from trainlab.preflight import preflight
from trainlab.progress import Progress
from trainlab.signals import Interrupted, graceful_stop
from trainlab.tasks import Task

log = logging.getLogger(__name__)


def hydra_task(cfg: DictConfig) -> float:
    """The body of each `trainlab train` job; returns the best monitored value (what a
    sweeper optimises). In a sweep a failing job records its status and returns NaN: it is a
    row of the sweep's summary (and a failed Optuna trial), not the end of the sweep."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    config.absolute_paths(cfg)
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
        results = run(cfg, run_dir, launch=launch, resume=resume, multirun=multirun)
    except TrainlabError as e:
        if not multirun:
            raise SystemExit(rundir.report(e)) from None
        ours = not isinstance(e, lock.FolderInUse)  # another process's folder: touch nothing
        if ours and distributed.launched_world().main and not (run_dir / "status.json").is_file():
            _record_status(run_dir, "failed", rundir.message_of(e))
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


def resume(run_dir: Path, overrides: list[str], allow: list[str], argv: list[str]) -> int:
    """`trainlab resume RUN_DIR [key=value ...]`: continue from the run's newest good
    checkpoint, in place. The stored config is the source of truth; overrides may extend or
    re-pace the run, anything else needs --allow-change KEY."""
    try:
        stored = config.load_run_config(run_dir)
        cfg = config.apply_overrides(stored, overrides)
        config.check(cfg)
        found = config.changes(stored, cfg)
        config.check_resume_changes(found, allow)
        _check_world(cfg, run_dir)
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


def _check_world(cfg: DictConfig, run_dir: Path) -> None:
    """A resume runs on as many processes as the run was trained on, or says what changing
    that would change."""
    n, launched = cfg.trainer.devices, distributed.launched_world().size
    if n == launched:
        return
    same = f"torchrun --nproc_per_node={n} -m trainlab resume" if n > 1 else "trainlab resume"
    batch = cfg.trainer.batch_size
    raise ConfigError(
        f"trainer.devices={n}: the run was trained on {n} process(es) and this resume has "
        f"{launched}; continue it as it was with `{same} {run_dir}`, or change it with "
        f"trainer.devices={launched} --allow-change trainer.devices: each process's share of "
        f"trainer.batch_size={batch} would go from {batch // n} to {batch // launched} and sums "
        "would add up in another order, so it would not continue bitwise"
    )


def run(
    cfg: DictConfig,
    run_dir: Path,
    launch: dict[str, Any] | None,
    resume: Resume | None = None,
    multirun: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Train, test and record one run in `run_dir`; returns what metrics.json holds. Under
    torchrun every rank runs this; rank 0 alone writes the folder, and holds its lock."""
    argv = list(sys.argv if argv is None else argv)
    ckpt_dir = run_dir / "checkpoints"
    # A folder with a run in it but no checkpoint (stopped before its first save) starts over
    # in place.
    in_place = resume is None and (run_dir / "config.yaml").is_file()
    rank = distributed.launched_world().rank
    # Rank 0 owns the folder (a no-op where the callback or `resume` took it already); the
    # signal handlers stay from start-up to the end (nested in the CLI's, if it has them).
    with (
        lock.owning(run_dir, needed=rank == 0),
        graceful_stop() as stop,
        metrics.console_and_log_file(run_dir / "train.log", rank) as start_log_file,
    ):
        # ---- setup: build everything; nothing is written yet ----
        try:
            _setup_torch(cfg.trainer)
            world, device = distributed.setup(cfg.trainer.devices, cfg.trainer.accelerator)
            data = build_data(cfg.dataset, device)
            parts = _build_parts(cfg, data, device, world)
            preflight(cfg, parts)
            if world.rank > 0:  # the same initial weights, but each rank its own dropout masks
                _seed_everything(epoch_seed(cfg.seed, RANK_STREAM, world.rank) % 2**32)
            parts.model = distributed.wrap(parts.model, device)
            state, environment, rng, resumed_from = (
                LoopState(),
                _environment(cfg, device, world),
                None,
                None,
            )
            notes = []
            # Read before anything is written: a damaged run.json is refused, not replaced.
            run_json = run_dir / "run.json"
            earlier = rundir.read_json(run_json) if world.main and run_json.is_file() else None
            if resume is not None:
                if world.main:
                    checkpoint.sweep_temp_files(ckpt_dir)
                saved, entry = checkpoint.load_latest(ckpt_dir)
                restorable = (parts.model, parts.optimizer, parts.scheduler, parts.precision.scaler)
                state = LoopState(**checkpoint.restore(saved, *restorable))
                notes = _check_environment(saved["environment"], environment, resume.allow)
                _check_length(cfg.trainer, state)
                _apply_optimizer_changes(parts, resume.changes)
                rng, state.partial_sums = _rank_state(saved, world)
                resumed_from = entry
        except (TrainlabError, KeyboardInterrupt) as e:
            if rank == 0 and multirun:
                _record_status(run_dir, "failed", str(e))
            elif rank == 0 and resume is None and not in_place:
                rundir.release(run_dir)  # leave no trace of a rejected run
            if isinstance(e, KeyboardInterrupt):  # Ctrl-C twice in start-up: nothing written
                raise SystemExit(128 + signal.SIGINT) from None
            raise

        def status(*args: str) -> None:
            if world.main:
                rundir.write_status(run_dir, *args)

        # ---- the run is accepted: from here on rank 0 writes its folder ----
        try:
            if world.main:
                record = _write_records(cfg, run_dir, launch, resume, earlier, resumed_from,
                                        notes, argv, environment, data)  # fmt: skip
            else:
                record = {"choices": (launch or {}).get("choices", {}), "overrides": []}
            start_log_file()
            status("running")
        except TrainlabError as e:  # a record could not be written (disk full, read-only)
            if world.main:
                _record_status(run_dir, "failed", str(e))
            raise
        log.info(f"run folder: {run_dir}")
        for note in notes:
            log.warning(note)
        if world.distributed:
            log.info(_sharding(cfg.trainer, len(data.train), world))
        if resumed_from is not None:
            log.info(
                f"resuming from {resumed_from['name']}: epoch {state.epoch}, step {state.step}"
                + (f", batch {state.batch_in_epoch} of the epoch" if state.batch_in_epoch else "")
            )
        # Drop events an earlier attempt wrote after this checkpoint (points at its own step
        # were logged before it was saved and stay); a fresh start in place drops them all.
        purge = state.step + 1 if resume is not None else (0 if in_place else None)
        writer = metrics.open_writer(run_dir / "tb", purge, world.main)
        try:
            # A signal during start-up: the run is recorded (config, run.json) but nothing
            # was trained; `trainlab resume` starts it over in place.
            stop.check(saved=resumed_from is not None)
            if resume is None and world.main:
                metrics.log_config(writer, cfg)
                _log_inputs(cfg, parts, writer)
            ckpt = _checkpointing(cfg, ckpt_dir, environment, world.main)
            steps_per_epoch = -(-len(parts.train) // cfg.trainer.accumulate_grad_batches)
            max_epochs = cfg.trainer.max_epochs if cfg.trainer.max_steps is None else None
            mode = cfg.trainer.progress if world.main else "none"
            progress = Progress(mode, max_epochs, steps_per_epoch)
            if rng is not None:
                checkpoint.restore_rng(rng)  # the last thing before training continues
            # Plain dataclasses, not DictConfig: the loop reads these every step, and an
            # OmegaConf attribute costs tens of microseconds.
            trainer = OmegaConf.to_object(cfg.trainer)
            state = fit(trainer, parts, state, writer, ckpt, stop, progress)
            results = _test(cfg, run_dir, parts, data, state, world)
            # A signal during the test: the last checkpoint is the final one, so a resume
            # trains nothing and tests again.
            stop.check()
            _record_results(cfg, run_dir, results, record, writer, state, world)
            status("completed")
        except Interrupted as e:
            _record_status(run_dir, "interrupted", signal.Signals(e.signum).name, world.main)
            how = "starts it over" if not checkpoint.has_checkpoint(ckpt_dir) else "continues"
            log.info(f"{e}; `trainlab resume {run_dir}` {how}")
            writer.close()
            e.hand_on()  # on a SLURM job: submitit requeues it
            raise SystemExit(e.exit_code) from None
        except Diverged as e:
            _record_status(run_dir, "diverged", str(e), world.main)
            raise
        except KeyboardInterrupt:
            why = "SIGINT (no checkpoint: stopped at once)"
            _record_status(run_dir, "interrupted", why, world.main)
            log.info(f"interrupted; continue from the last checkpoint: trainlab resume {run_dir}")
            raise SystemExit(128 + signal.SIGINT) from None
        except BaseException as e:
            why = rundir.message_of(e) if isinstance(e, TrainlabError) else first_line(e)
            if not isinstance(e, TrainlabError):
                why = f"{e.__class__.__name__}: {why}"
            _record_status(run_dir, "failed", why, world.main)
            raise
        finally:
            writer.close()
        _print_summary(run_dir, results, world)
        return results


def _record_status(run_dir: Path, status: str, reason: str, main: bool = True) -> None:
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
    earlier: dict[str, Any] | None,
    resumed_from: dict[str, Any] | None,
    notes: list[str],
    argv: list[str],
    environment: dict[str, Any],
    data: Data,
) -> dict[str, Any]:
    """config.yaml (new, or changed by a resume) and run.json (new, or one more attempt)."""
    checkpoint.sweep_temp_files(run_dir / "checkpoints")
    rundir.sweep_temp_files(run_dir, rundir.RECORDS)
    if resume is None or resume.changes:
        rundir.write_record(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if earlier is None:
        record = rundir.run_record(cfg.name, cfg.seed, launch or {}, environment, argv)
        # What predict names the outputs by and feeds the model, as trained (DESIGN 9).
        record["data"] = {"classes": data.classes, "features": data.features}
    else:
        record = earlier
        attempt = rundir.launch_record(argv)
        if resumed_from is not None:
            attempt["resumed_from"] = resumed_from["name"]
        else:
            attempt["started_over"] = "no checkpoint yet: trained from the start, in place"
        if resume is not None and resume.changes:
            attempt["changed"] = {k: list(v) for k, v in resume.changes.items()}
        if notes:
            attempt["notes"] = notes
        record["attempts"].append(attempt)
    rundir.write_json(run_dir / "run.json", record)
    return record


def _log_inputs(cfg: DictConfig, parts: Parts, writer: Any) -> None:
    """What TensorBoard shows of the model and its inputs at a fresh start."""
    tb = cfg.trainer.tensorboard
    if not (tb.graph or tb.example_images):
        return
    x, _ = parts.train.sample(max(tb.example_images, 2))
    if tb.graph:
        metrics.log_graph(writer, checkpoint.unwrap(parts.model), x[:2])
    if tb.example_images and x.dim() == 4:
        metrics.log_examples(writer, x[: tb.example_images])


# A tag that keeps the per-rank seeds apart from the (seed, epoch) data-order streams.
RANK_STREAM = 0x5EED


def _rank_state(saved: dict[str, Any], world: distributed.World) -> tuple[Any, Any]:
    """This rank's random streams and mid-epoch running sums from a checkpoint. With the world
    size it was saved with, each rank gets its own back; after an allowed change of
    trainer.devices rank 0 carries every saved rank's sums and the new ranks keep fresh seeds."""
    ranks = saved.get("ranks") or [
        {"rng": saved["rng"], "partial_sums": saved["loop"]["partial_sums"]}
    ]
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


def _sharding(trainer: DictConfig, n: int, world: distributed.World) -> str:
    batch, size = trainer.batch_size, world.size
    line = (
        f"DDP: {size} processes; trainer.batch_size={batch} is the global batch, "
        f"{batch // size} samples per process"
    )
    tail = n % batch
    if tail % size:
        kept = tail - tail % size
        cut = f"trimmed to {kept}" if kept else "dropped"
        line += f"; each epoch's last batch ({tail} samples) is {cut}, a multiple of {size}"
    return line


def _checkpointing(
    cfg: DictConfig, ckpt_dir: Path, environment: dict[str, Any], main: bool
) -> Checkpointing:
    c = cfg.trainer.checkpoint
    return Checkpointing(
        directory=ckpt_dir,
        config=OmegaConf.to_yaml(cfg, resolve=True),
        environment=environment,
        policy=checkpoint.Policy(keep_last=c.keep_last, top_k=c.top_k),
        every_n_epochs=c.every_n_epochs,
        every_n_steps=c.every_n_steps,
        on_error=c.on_error,
        main=main,
    )


def _check_environment(
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
        if saved.get(key) == current[key]:
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


def _apply_optimizer_changes(parts: Parts, found: dict[str, tuple[Any, Any]]) -> None:
    """Loading the optimizer's state brings back its saved options (lr, weight_decay, ...);
    an allowed change of one must win over that, in every group, and rescale the schedule."""
    for key, (old, new) in found.items():
        option = key.removeprefix("optimizer.")
        if (
            not key.startswith("optimizer.")
            or "." in option
            or option not in parts.optimizer.defaults
        ):
            continue
        for group in parts.optimizer.param_groups:
            group[option] = new
        if option == "lr" and parts.scheduler is not None:
            parts.scheduler.base_lrs = [new for _ in parts.scheduler.base_lrs]
        log.info(f"optimizer.{option} is now {new} in every parameter group (was {old})")


def _check_length(trainer: DictConfig, state: LoopState) -> None:
    if trainer.max_steps is not None and trainer.max_steps < state.step:
        raise ConfigError(
            f"trainer.max_steps={trainer.max_steps}: the run has taken {state.step} steps "
            "already; a resume can extend it, not shorten it"
        )
    if trainer.max_steps is None and trainer.max_epochs < state.epoch:
        raise ConfigError(
            f"trainer.max_epochs={trainer.max_epochs}: the run has trained {state.epoch} epochs "
            "already; a resume can extend it, not shorten it"
        )


def _setup_torch(trainer: DictConfig) -> None:
    if trainer.num_threads is not None:
        torch.set_num_threads(trainer.num_threads)
    if trainer.deterministic:
        # cuBLAS needs this before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not trainer.deterministic
    # TF32 matmuls and convolutions on GPUs that have them (Ampere and later).
    torch.backends.cuda.matmul.allow_tf32 = trainer.tf32
    torch.backends.cudnn.allow_tf32 = trainer.tf32


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _build_parts(
    cfg: DictConfig, data: Data, device: torch.device, world: distributed.World
) -> Parts:
    t, workers = cfg.trainer, cfg.dataset.get("num_workers", 0)
    _seed_everything(cfg.seed)  # the model's initial weights come from the run seed
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = build_model(cfg.model).to(device, memory_format=memory_format)
    loss_fn = build_loss(cfg.loss).to(device)
    optimizer = build_optimizer(cfg.optimizer, model)  # after .to(device): it holds the params
    if t.compile:
        model = torch.compile(model)  # same parameters; checkpoints save the unwrapped module
    b, seed = t.batch_size, cfg.seed
    train_shard = Shard(world.rank, world.size, split_batches=True)
    train = make_batches(data.train, b, True, seed, device, workers, memory_format, train_shard)
    val_shard = Shard(world.rank, world.size, split_batches=False)
    val = make_batches(data.val, b, False, seed, device, workers, memory_format, val_shard)
    interval = cfg.scheduler.interval
    total = _run_length(t, math.ceil(len(train) / t.accumulate_grad_batches), interval)
    scheduler = build_scheduler(cfg.scheduler, optimizer, total, config.monitor_mode(t))
    return Parts(
        model, loss_fn, optimizer, scheduler, interval,
        task=task_of(cfg.dataset, data),
        train=train,
        val=val,
        precision=precision_of(t.precision, device),
        eval_with_average=bool(cfg.optimizer.get("eval_with_average", False)),
        # A per-step check is free on the CPU; on a GPU it is a sync per step, so it is only
        # made when skipping a bad step needs it (see loop.Parts).
        check_every_step=device.type == "cpu" or t.nan_policy == "skip",
    )  # fmt: skip


def task_of(cfg: DictConfig, data: Data) -> Task:
    task = Task.from_config(cfg)
    if task.kind == "classification":
        # Accuracy masks negative labels (ignore_index) only where some exist: one check here
        # spares the mask on every batch.
        splits = (data.train, data.val, data.test)
        task.ignored_labels = any(isinstance(s, Split) and bool((s.y < 0).any()) for s in splits)
    return task


def precision_of(name: str, device: torch.device) -> Precision:
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(device.type, dtype, scaler)


def _run_length(trainer: DictConfig, steps_per_epoch: int, interval: str) -> int:
    """How many times a scheduler with this interval steps in the whole run."""
    steps = trainer.max_steps or trainer.max_epochs * steps_per_epoch
    return steps if interval == "step" else math.ceil(steps / steps_per_epoch)


def _environment(cfg: DictConfig, device: torch.device, world: distributed.World) -> dict[str, Any]:
    if device.type == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        name = f"cpu ({platform.processor() or platform.machine()})"
    return {
        "torch": str(torch.__version__),  # TorchVersion is not a plain str: weights_only refuses it
        "num_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": name,
        "precision": cfg.trainer.precision,
        "world_size": world.size,
        "deterministic": cfg.trainer.deterministic,
        "tf32": cfg.trainer.tf32 and device.type == "cuda",
    }


def _test(
    cfg: DictConfig,
    run_dir: Path,
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
        best = _best_checkpoint(run_dir / "checkpoints", state)
    best_step, weights = distributed.broadcast_object(best)
    checkpoint.unwrap(parts.model).load_state_dict(weights)
    workers = cfg.dataset.get("num_workers", 0)
    device = parts.train.device
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    test_batches = make_batches(
        data.test, cfg.trainer.batch_size, False, cfg.seed, device, workers, memory_format,
        Shard(world.rank, world.size, split_batches=False),
    )  # fmt: skip
    # best.pt already holds the weights that were validated (the ASGD average, if asked for).
    parts.eval_with_average = False
    model = distributed.inner(parts.model)
    counts = None
    if parts.task.kind == "classification" and cfg.trainer.tensorboard.confusion_matrix:
        n = parts.task.num_classes
        counts = torch.zeros(n, n, dtype=torch.int64, device=device)
    with eval_weights(parts):
        test = evaluate(
            model, test_batches, parts.loss_fn, parts.task, "test", parts.precision, counts
        )
    confusion = None if counts is None else distributed.all_reduce_(counts).cpu().tolist()
    # The record of the checkpoint that was tested: the best validation, unless its save
    # failed (trainer.checkpoint.on_error=continue); then the newest best that was written.
    best_record = next(r for r in state.history if r["step"] == best_step)
    validated = [r for r in state.history if any(k.startswith("val/") for k in r)]
    return {
        "monitor": cfg.trainer.monitor,
        "mode": config.monitor_mode(cfg.trainer),
        "best": best_record,
        "final": validated[-1],
        "test": test,
        "epochs": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "train_s": state.train_s,
        "checkpoint_s": state.checkpoint_s,
        "wall_s": time.perf_counter() - trainlab.STARTED,
        "test_confusion_matrix": confusion,
    }


def _best_checkpoint(ckpt_dir: Path, state: LoopState) -> tuple[int, dict[str, Any]]:
    """(step, model weights) of best.pt as the manifest commits it. It is the best validation
    unless that save failed with trainer.checkpoint.on_error=continue: then it is an older
    one, and the run says so rather than test one epoch and report another."""
    best = checkpoint.read_manifest(ckpt_dir).get("best")
    if best is None:
        raise checkpoint.CheckpointSaveError(
            f"{ckpt_dir}: no best checkpoint was written (every save failed, see the warnings "
            "above), so there are no validated weights to test"
        )
    saved = checkpoint.load(ckpt_dir / "best.pt", map_location="cpu")
    step = saved["loop"]["step"]
    if step != state.best_step:
        log.warning(
            f"the best validation was at step {state.best_step} (epoch {state.best_epoch}) but "
            f"its checkpoint was not written; testing best.pt = {best} from step {step}"
        )
    return step, saved["model"]


def _record_results(
    cfg: DictConfig,
    run_dir: Path,
    results: dict[str, Any],
    record: dict[str, Any],
    writer: Any,
    state: LoopState,
    world: distributed.World,
) -> None:
    """metrics.json, then the run's summary in TensorBoard (hparams, test scalars)."""
    if world.main:
        rundir.write_json(run_dir / "metrics.json", results)
    best_record, validated = results["best"], results["final"]
    scalars = {f"best/{cfg.trainer.monitor}": best_record[cfg.trainer.monitor]}
    scalars |= {f"final/{k}": v for k, v in validated.items() if k.startswith("val/")}
    scalars |= results["test"]
    hparam_values = metrics.hparams(cfg, record["choices"], record["overrides"])
    # One step past training: a resume purges from its checkpoint's step + 1, so a summary
    # written by an attempt that crashed while testing never shows up twice.
    metrics.log_hparams(writer, hparam_values, scalars, state.step + 1)
    confusion = results["test_confusion_matrix"]
    if confusion is not None:
        labels = [str(i) for i in range(len(confusion))]
        metrics.log_confusion(writer, torch.tensor(confusion), labels, state.step + 1)


def _print_summary(run_dir: Path, results: dict[str, Any], world: distributed.World) -> None:
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
