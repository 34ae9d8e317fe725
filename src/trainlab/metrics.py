"""Where a run's numbers go: event sinks behind one small interface (Sink). TensorBoardSink
writes tb/ (scalars, text, hparams, images, histograms, the graph); CsvSink writes
metrics.csv, one row per logged step, a column per scalar tag. Events hands every call to each
sink. On resume every sink drops what the crashed attempt wrote from `purge_step` on (the
checkpoint's step + 1), so no step appears twice and none is missing.

Adding a sink (Weights & Biases, MLflow, a JSON-lines file): subclass Sink, implement what it
can show, and add it to the list in open_events; nothing else changes.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
import warnings
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.optim import Optimizer

from trainlab.errors import first_line
from trainlab.rundir import write_atomic

log = logging.getLogger(__name__)

# Run-level keys every run's hparams carry, besides the group choices and the overridden keys.
CORE_HPARAMS = ("seed", "optimizer.lr", "trainer.batch_size", "trainer.max_epochs")


class Sink:
    """One place a run's events go; each method a sink cannot show is left a no-op. `images`
    are (N, C, H, W) floats in [0, 1]. flush() makes what was logged durable: the loop calls
    it before every checkpoint, so a resumed run's purge never leaves a hole."""

    def scalars(self, scalars: dict[str, float], step: int) -> None: ...

    def text(self, tag: str, text: str, step: int) -> None: ...

    def hparams(self, values: dict[str, Any], results: dict[str, float], step: int) -> None: ...

    def images(self, tag: str, images: Tensor, step: int) -> None: ...

    def histogram(self, tag: str, values: Tensor, step: int) -> None: ...

    def graph(self, model: nn.Module, example: Tensor) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Events:
    """The run's sinks together: what the loop and train.py write to. Ranks other than 0, and
    a fast_dev_run, hold one with no sinks."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def scalars(self, scalars: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.scalars(scalars, step)

    def text(self, tag: str, text: str, step: int) -> None:
        for sink in self.sinks:
            sink.text(tag, text, step)

    def hparams(self, values: dict[str, Any], results: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.hparams(values, results, step)

    def images(self, tag: str, images: Tensor, step: int) -> None:
        for sink in self.sinks:
            sink.images(tag, images, step)

    def histogram(self, tag: str, values: Tensor, step: int) -> None:
        for sink in self.sinks:
            sink.histogram(tag, values, step)

    def graph(self, model: nn.Module, example: Tensor) -> None:
        for sink in self.sinks:
            sink.graph(model, example)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_events(run_dir: Path, purge_step: int | None, keep: bool) -> Events:
    """The run's sinks (none where `keep` is false: ranks other than 0, fast_dev_run)."""
    if not keep:
        return Events([])
    return Events(
        [TensorBoardSink(run_dir / "tb", purge_step), CsvSink(run_dir / "metrics.csv", purge_step)]
    )


class TensorBoardSink(Sink):
    """tb/: one TensorBoard run per job, reopened with purge_step on resume."""

    def __init__(self, tb_dir: Path, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard reads a run's event files in name order, and names start with the
        # creation second: a new attempt's file must sort after the earlier ones, or their
        # older steps read as out of order and get purged.
        stamps = [int(p.name.split(".")[3]) for p in tb_dir.glob("events.out.tfevents.*")]
        if stamps and time.time() < max(stamps) + 1:
            time.sleep(max(stamps) + 1 - time.time())
        self.writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step)

    def scalars(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def hparams(self, values: dict[str, Any], results: dict[str, float], step: int) -> None:
        """Into the run's own event file (add_hparams would make a sub-folder), each result
        also as a scalar: the HParams dashboard reads metric values from scalars."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        self.scalars(results, step)
        for summary in hparams_summaries(values, results):
            self.writer.file_writer.add_summary(summary, step)

    def images(self, tag: str, images: Tensor, step: int) -> None:
        if images.shape[0] == 1:
            self.writer.add_image(tag, images[0], step)
        else:
            self.writer.add_images(tag, images, step)

    def histogram(self, tag: str, values: Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values, step)

    def graph(self, model: nn.Module, example: Tensor) -> None:
        self.writer.add_graph(model, example)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CsvSink(Sink):
    """metrics.csv: a `step` column and one per scalar tag, one row per logged step, for
    pandas.read_csv. New rows are appended at each flush; a tag first seen later, or a value
    added to a row already written, rewrites the file atomically with every row. On resume the
    rows from purge_step on are dropped (0: all), as TensorBoard purges its events, and a row
    a kill cut off half-written is dropped with them."""

    def __init__(self, path: Path, purge_step: int | None) -> None:
        self.path = path
        self.rows: dict[int, dict[str, float]] = {}  # in step order: steps only grow
        self.columns: list[str] = []
        self.written = 0  # rows on disk under the current columns; -1: rewrite them all
        self.last_written: int | None = None  # the step of the last of them
        if purge_step is not None and path.is_file():
            for step, row in _read_rows(path):
                if step < purge_step:
                    self.scalars(row, step)
        self.written = -1  # the first flush writes a new file (it drops what was purged)

    def scalars(self, scalars: dict[str, float], step: int) -> None:
        new = [k for k in scalars if k not in self.columns]
        if new or (self.last_written is not None and step <= self.last_written):
            self.written = -1
        self.columns += new
        self.rows.setdefault(step, {}).update({k: float(v) for k, v in scalars.items()})

    def hparams(self, values: dict[str, Any], results: dict[str, float], step: int) -> None:
        self.scalars(results, step)

    def flush(self) -> None:
        if self.written == len(self.rows):
            return
        try:
            if self.written < 0:
                text = self._text(list(self.rows.items()), header=True)
                write_atomic(self.path, text.encode(), sync_folder=False)
            else:
                pending = list(self.rows.items())[self.written :]
                with self.path.open("a", encoding="utf-8", newline="") as f:
                    f.write(self._text(pending, header=False))
        except OSError as e:
            self.written = -1  # the next flush rewrites the whole file
            log.warning(
                f"could not write {self.path} ({e.strerror or e}); retried at the next save"
            )
            return
        self.written = len(self.rows)
        self.last_written = next(reversed(self.rows)) if self.rows else None

    def close(self) -> None:
        self.flush()

    def _text(self, rows: list[tuple[int, dict[str, float]]], header: bool) -> str:
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\n")
        if header:
            writer.writerow(["step", *self.columns])
        for step, row in rows:
            writer.writerow([step, *(repr(row[c]) if c in row else "" for c in self.columns)])
        return out.getvalue()


def _read_rows(path: Path) -> list[tuple[int, dict[str, float]]]:
    """The rows of a metrics.csv; a last line without its newline (a kill mid-write) is left
    out, and so is anything that does not parse."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    rows = []
    for record in csv.DictReader(lines):
        try:
            step = int(record.pop("step"))
            rows.append((step, {k: float(v) for k, v in record.items() if k and v}))
        except (TypeError, ValueError):
            continue
    return rows


# ---- what a run reports, through whichever sinks it has ----


def lr_scalars(optimizer: Optimizer, prefix: str = "lr") -> dict[str, float]:
    return {f"{prefix}/group{i}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


def log_config(events: Events, cfg: DictConfig) -> None:
    # Indented four spaces: TensorBoard renders text as markdown, this keeps it a code block.
    text = "\n".join("    " + line for line in OmegaConf.to_yaml(cfg).splitlines())
    events.text("config", text, 0)


def hparams(cfg: DictConfig, choices: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """A flat dict: the group choices, CORE_HPARAMS and every key set on the command line.

    The jobs of one sweep share their override keys, so they share this key set, which the
    HParams dashboard needs to compare them.
    """
    values: dict[str, Any] = {group: str(choice) for group, choice in sorted(choices.items())}
    keys = list(CORE_HPARAMS)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key not in choices and key not in keys:
            keys.append(key)
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            value = str(OmegaConf.to_container(value, resolve=True))
        elif isinstance(value, Enum):
            value = str(value)
        values[key] = "null" if value is None else value
    return values


def log_hparams(
    events: Events, hparam_values: dict[str, Any], results: dict[str, float], step: int
) -> None:
    finite = {k: v for k, v in results.items() if math.isfinite(v)}
    events.hparams(hparam_values, finite, step)


def log_graph(events: Events, model: nn.Module, example: Tensor) -> None:
    """The model's graph, traced once in eval mode on a few samples: no random draw, no
    buffer update, so it changes nothing the run computes. A model that cannot be traced
    (data-dependent control flow) gets a warning, not an error."""
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings about Python control flow
            model.eval()
            events.graph(model, example)
    except Exception as e:
        log.warning(
            f"trainer.tensorboard.graph: the model could not be traced ({first_line(e)}); "
            "no graph in TensorBoard (set trainer.tensorboard.graph=false to skip trying)"
        )
    finally:
        model.train(was_training)


def log_examples(events: Events, images: Tensor) -> None:
    """Training inputs as images, each scaled to [0, 1] (they are normalised for the model)."""
    x = images.detach().float().cpu()
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    events.images("examples/train", (x - low) / (high - low).clamp(min=1e-12), 0)


def log_histograms(events: Events, model: nn.Module, step: int) -> None:
    """Every parameter's values and its last gradient."""
    for name, p in model.named_parameters():
        events.histogram(f"weights/{name}", p.detach().float().cpu(), step)
        if p.grad is not None:
            events.histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)


def log_confusion(events: Events, matrix: Tensor, labels: list[str], step: int) -> None:
    """The confusion matrix (rows: true class, columns: predicted) as a heat map, each row
    scaled by its count, 16 pixels a cell, and as a table of counts."""
    counts = matrix.double()
    rows = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    cells = rows.repeat_interleave(16, 0).repeat_interleave(16, 1)
    events.images("test/confusion_matrix", cells.float()[None, None], step)
    header = "| true \\ predicted | " + " | ".join(labels) + " |"
    lines = [header, "|" + "---|" * (len(labels) + 1)]
    for label, row in zip(labels, matrix.tolist(), strict=True):
        lines.append(f"| **{label}** | " + " | ".join(str(int(v)) for v in row) + " |")
    events.text("test/confusion_matrix", "\n".join(lines), step)
