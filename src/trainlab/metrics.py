"""What a run reports: TensorBoard scalars, config text and hparams, and the console lines."""

from __future__ import annotations

import logging
import logging.handlers
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from trainlab.errors import first_line

log = logging.getLogger(__name__)

# Run-level keys every run's hparams carry, besides the group choices and the overridden keys.
CORE_HPARAMS = ("seed", "optimizer.lr", "trainer.batch_size", "trainer.max_epochs")


class NoEvents:
    """What ranks other than 0 get instead of a SummaryWriter: they write no events."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None

    @property
    def file_writer(self) -> NoEvents:
        return self


def open_writer(
    tb_dir: Path, purge_step: int | None, main: bool = True
) -> SummaryWriter | NoEvents:
    """The run's one event stream (rank 0's). On resume, purge_step (the checkpoint's step + 1)
    drops the events the crashed attempt wrote after its checkpoint, so no step appears twice."""
    if not main:
        return NoEvents()
    # TensorBoard reads a run's event files in name order, and names start with the creation
    # second: a new attempt's file must sort after the earlier ones, or their older steps read
    # as out of order and get purged.
    stamps = [int(p.name.split(".")[3]) for p in tb_dir.glob("events.out.tfevents.*")]
    if stamps and time.time() < max(stamps) + 1:
        time.sleep(max(stamps) + 1 - time.time())
    return SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step)


def log_scalars(writer: SummaryWriter, scalars: dict[str, float], step: int) -> None:
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, step)


def lr_scalars(optimizer: Optimizer) -> dict[str, float]:
    return {f"lr/group{i}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


def log_config(writer: SummaryWriter, cfg: DictConfig) -> None:
    # Indented four spaces: TensorBoard renders text as markdown, this keeps it a code block.
    text = "\n".join("    " + line for line in OmegaConf.to_yaml(cfg).splitlines())
    writer.add_text("config", text, 0)


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
        values[key] = "null" if value is None else value
    return values


def log_hparams(
    writer: SummaryWriter, hparam_values: dict[str, Any], results: dict[str, float], step: int
) -> None:
    """Write the hparams into the run's own event file (add_hparams would make a sub-folder),
    with each result also as a scalar: the HParams dashboard reads metric values from scalars."""
    finite = {k: v for k, v in results.items() if math.isfinite(v)}
    log_scalars(writer, finite, step)
    for summary in hparams_summaries(hparam_values, finite):
        writer.file_writer.add_summary(summary, step)


def per_label(key: str) -> bool:
    """f1_3 and the like: kept in the records and TensorBoard, left off the console."""
    return key.rpartition("_")[2].isdigit()


def format_epoch(epoch: int, max_epochs: int | None, record: dict[str, float]) -> str:
    """One console line per epoch: the metrics, then the time."""
    total = f"/{max_epochs}" if max_epochs else ""
    shown = [
        f"{k} {v:.4f}"
        for k, v in record.items()
        if k.startswith(("train/", "val/")) and isinstance(v, float) and not per_label(k)
    ]
    return f"epoch {epoch}{total}  " + "  ".join(shown) + f"  {record['time/epoch_s']:.1f}s"


@contextmanager
def console_and_log_file(log_file: Path, rank: int = 0) -> Iterator[Callable[[], None]]:
    """Console lines from the start; train.log (appended) once the run is accepted, with the
    lines printed before that replayed into it. Yields the function that opens the file.
    Ranks other than 0 print only warnings and errors, marked [rank R], and write no file."""
    logger = logging.getLogger("trainlab")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s" if rank else "%(message)s"))
    buffer = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    saved = logger.level, logger.propagate
    logger.setLevel(logging.WARNING if rank else logging.INFO)
    logger.propagate = False  # Hydra's root handler would print every line a second time
    logger.addHandler(console)
    logger.addHandler(buffer)
    file_handler: logging.FileHandler | None = None

    def start_log_file() -> None:
        nonlocal file_handler
        if rank:
            return
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        buffer.setTarget(file_handler)
        buffer.flush()
        logger.removeHandler(buffer)
        logger.addHandler(file_handler)

    try:
        yield start_log_file
    finally:
        for handler in (console, buffer, file_handler):
            if handler is not None:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# ---- what TensorBoard shows besides scalars (trainer.tensorboard) ----


def log_graph(writer: SummaryWriter | NoEvents, model: nn.Module, example: Tensor) -> None:
    """The model's graph, traced once in eval mode on a few samples: no random draw, no
    buffer update, so it changes nothing the run computes. A model that cannot be traced
    (data-dependent control flow) gets a warning, not an error."""
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings about Python control flow
            model.eval()
            writer.add_graph(model, example)
    except Exception as e:
        log.warning(
            f"trainer.tensorboard.graph: the model could not be traced ({first_line(e)}); "
            "no graph in TensorBoard (set trainer.tensorboard.graph=false to skip trying)"
        )
    finally:
        model.train(was_training)


def log_examples(writer: SummaryWriter | NoEvents, images: Tensor) -> None:
    """Training inputs as images, each scaled to [0, 1] (they are normalised for the model)."""
    x = images.detach().float().cpu()
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    writer.add_images("examples/train", (x - low) / (high - low).clamp(min=1e-12), 0)


def log_histograms(writer: SummaryWriter | NoEvents, model: nn.Module, step: int) -> None:
    """Every parameter's values and its last gradient."""
    for name, p in model.named_parameters():
        writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
        if p.grad is not None:
            writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)


def log_confusion(
    writer: SummaryWriter | NoEvents, matrix: Tensor, labels: list[str], step: int
) -> None:
    """The confusion matrix (rows: true class, columns: predicted) as a heat map, each row
    scaled by its count, 16 pixels a cell, and as a table of counts."""
    counts = matrix.double()
    rows = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    cells = rows.repeat_interleave(16, 0).repeat_interleave(16, 1)
    writer.add_image("test/confusion_matrix", cells.float()[None], step)
    header = "| true \\ predicted | " + " | ".join(labels) + " |"
    lines = [header, "|" + "---|" * (len(labels) + 1)]
    for label, row in zip(labels, matrix.tolist(), strict=True):
        lines.append(f"| **{label}** | " + " | ".join(str(int(v)) for v in row) + " |")
    writer.add_text("test/confusion_matrix", "\n".join(lines), step)
