"""A run folder put to use after training: `trainlab eval` (a checkpoint's metrics on a split)
and `trainlab predict` (a CSV of predictions for new inputs). Model, data and metrics are
rebuilt from the run's own config.yaml, never from conf/, so a run still evaluates after the
YAML files it was trained from have changed; no flag repeats what the run already says."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from trainlab import (
    checkpoint_files,
    config,
    dataspec,
    distributed,
    fitting,
    lock,
    runconfig,
    rundir,
    steps,
    tasks,
)  # fmt: skip
from trainlab.build import build_loss, build_model
from trainlab.console import per_label
from trainlab.data import build_data
from trainlab.datasets import float_columns, load_image, read_csv
from trainlab.errors import ConfigError, DataError, TrainlabError
from trainlab.loop import evaluation_of
from trainlab.parts import batches, precision_of

log = logging.getLogger(__name__)


@dataclass
class Rebuilt:
    """A run's model with a checkpoint's weights, in eval mode, on the run's device."""

    cfg: DictConfig
    model: nn.Module
    device: torch.device
    checkpoint: Path
    entry: dict[str, Any]  # the checkpoint's manifest entry: step, epoch, metric
    data: dict[str, Any]  # run.json's data: classes, features, standardize statistics


def rebuild(run_dir: Path, which: str) -> Rebuilt:
    """`which`: best, last, or the path of one of the run's checkpoint files."""
    cfg = runconfig.load_run_config(run_dir)
    config.check(cfg)
    path = checkpoint_path(run_dir, which)
    saved = checkpoint_files.load(path)
    device = distributed.pick_device(cfg.trainer.accelerator, distributed.World())
    model = build_model(cfg.model).to(device)
    model.load_state_dict(saved["model"])
    model.eval()
    manifest = checkpoint_files.read_manifest(path.parent)
    name = {"best.pt": manifest.get("best"), "last.pt": manifest.get("last")}.get(path.name)
    entry = manifest["files"].get(name or path.name, {}) | {"name": name or path.name}
    return Rebuilt(cfg, model, device, path, entry, _stored_data(run_dir))


def checkpoint_path(run_dir: Path, which: str) -> Path:
    ckpt_dir = run_dir / "checkpoints"
    if not checkpoint_files.read_manifest(ckpt_dir)["files"]:
        raise ConfigError(
            f"{run_dir}: no checkpoints (checkpoints/{checkpoint_files.MANIFEST} lists none); "
            "the run stopped before its first save (or was a trainer.fast_dev_run, which keeps "
            "none), so there are no weights to use"
        )
    if which in ("best", "last"):
        return ckpt_dir / f"{which}.pt"
    path = Path(which)
    if not path.is_file():
        raise ConfigError(
            f"--checkpoint {which}: no such file; use best, last, or a file in {ckpt_dir}"
        )
    return path


def eval_run(run_dir: Path, which: str, split: str) -> int:
    """`trainlab eval RUN_DIR`: print a checkpoint's metrics on a split and write them to
    RUN_DIR/eval/<split>-<checkpoint>.json."""
    try:
        run = rebuild(run_dir, which)
        cfg, device = run.cfg, run.device
        data = build_data(cfg.dataset, device, run.data.get("standardize"), cfg.task)
        rows = {"test": data.test, "val": data.val}[split]
        # The whole split, whatever the run's limit_*_batches were: eval measures the split.
        whole = {"fast_dev_run": False, "limit_val_batches": None, "overfit_batches": None}
        trainer = dataclasses.replace(config.trainer_of(cfg), **whole)
        loss_fn = build_loss(cfg.loss).to(device)
        started = time.perf_counter()
        task = tasks.task_of(cfg.dataset, data.held_targets(), cfg.task, trainer.knn_k)
        precision = precision_of(trainer.precision, device)
        split_batches = batches(rows, split, trainer, cfg.seed, data, distributed.World())
        evaluate = evaluation_of(steps.resolve(cfg))
        results = evaluate(run.model, split_batches, loss_fn, task, split, precision)
        entry = run.entry
        record = {
            "split": split,
            "checkpoint": entry["name"],
            "step": entry.get("step"),
            "epoch": entry.get("epoch"),
            "metrics": results,
            "samples": len(rows),
            "seconds": time.perf_counter() - started,
        }
        label = which if which in ("best", "last") else Path(entry["name"]).stem
        out = run_dir / "eval" / f"{split}-{label}.json"
        with lock.owning(run_dir):  # it writes into the run: one writer at a time
            rundir.make_dir(out.parent, "eval")
            rundir.write_json(out, record)
    except TrainlabError as e:
        return rundir.report(e)
    where = f"epoch {entry.get('epoch')}, step {entry.get('step')}"
    shown = f"{which}.pt = {entry['name']}" if which in ("best", "last") else entry["name"]
    print(f"{split} split, {len(rows)} samples, {shown} ({where}):")
    for key, value in results.items():
        if not per_label(key):
            print(f"  {key:<12} {value:.4f}")
    print(f"written to {out}")
    return 0


# ---- predict ----


def predict(run_dir: Path, input_path: Path, output: Path | None, which: str) -> int:
    """`trainlab predict RUN_DIR --input FILE`: predictions for a CSV table (dataset=csv) or
    image files (dataset=image_folder), as a CSV."""
    try:
        run = rebuild(run_dir, which)
        if run.cfg.task != "supervised":
            raise ConfigError(
                f"task={run.cfg.task}: predict writes a supervised model's predictions (classes, "
                "values); use `trainlab eval` for this run's metrics, or load its weights with "
                "trainlab.export.load_model (after `trainlab export`)"
            )
        target = run.cfg.dataset._target_
        # What the data was when the run was trained, stored then: the training files may
        # have changed since (one appended row would shift every class name).
        stored = run.data
        if target == "trainlab.datasets.csv_table":
            names, x = _read_table(run.cfg.dataset, input_path, stored.get("features"))
            if stored.get("standardize"):
                x = dataspec.standardized(x, stored["standardize"], f"--input {input_path}")
        elif target == "trainlab.datasets.image_folder":
            names, x = _read_images(run.cfg.dataset, input_path)
        else:
            raise ConfigError(
                f"dataset={target}: predict reads new inputs as a CSV table (dataset=csv) or "
                "as image files (dataset=image_folder); this run was trained on another kind"
            )
        with torch.no_grad():
            out = run.model(x.to(run.device)).float().cpu()
        labels = stored.get("classes")
        inside = output is None  # the default: RUN_DIR/predictions/, a write into the run
        output = output or run_dir / "predictions" / f"{input_path.stem}.csv"
        with lock.owning(run_dir, needed=inside):
            rundir.make_dir(output.parent, "--output")
            text = _predictions_csv(run.cfg.dataset.task, names, out, labels)
            rundir.write_record(output, text)
    except TrainlabError as e:
        return rundir.report(e)
    print(f"{len(names)} predictions from {run.entry['name']} written to {output}")
    return 0


def _stored_data(run_dir: Path) -> dict:
    """What the data was when the run was trained (run.json's data: classes, features,
    standardize statistics); the training files may have changed since."""
    path = run_dir / "run.json"
    return (rundir.read_json(path).get("data") or {}) if path.is_file() else {}


def _read_table(
    dataset: DictConfig, path: Path, features: list[str] | None
) -> tuple[list[str], Tensor]:
    """The input columns the model was trained on (`features`: as stored by the run), read
    from `path` as the training table was; the target column may be absent."""
    rows, header = read_csv(path, "--input")
    columns = list(features or dataset.features or [])
    if not columns:
        raise ConfigError(
            f"{path}: the run does not record which columns it was trained on (it predates "
            "trainlab storing them); retrain it, or one with dataset.features=[...]"
        )
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(
            f"--input {path}: lacks the column(s) {', '.join(missing)} the model was trained on "
            f"(dataset.features: {', '.join(columns)})"
        )
    x = torch.from_numpy(float_columns(rows, columns, str(path)))
    return [str(i) for i in range(len(rows))], x


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _read_images(dataset: DictConfig, path: Path) -> tuple[list[str], Tensor]:
    """One image or a folder of them, through the run's evaluation transforms."""
    from torchvision.transforms import Compose

    files = (
        sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if path.is_dir()
        else [path]
    )
    if not files or not all(p.is_file() for p in files):
        raise DataError(f"--input {path}: no image files there ({', '.join(IMAGE_SUFFIXES)})")
    steps = instantiate(OmegaConf.to_container(dataset.transforms, resolve=True))
    transform = Compose(steps)
    x = torch.stack([transform(load_image(p)) for p in files])
    return [str(p) for p in files], x


def _predictions_csv(task: str, names: list[str], out: Tensor, labels: list[str] | None) -> str:
    """The predictions as CSV text, one row per input (fitting.prediction_table)."""
    header, rows = fitting.prediction_table(task, out, labels)
    with io.StringIO(newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["input", *header])
        for name, row in zip(names, rows, strict=True):
            writer.writerow([name, *row])
        return f.getvalue()
