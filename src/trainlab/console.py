"""What the console and train.log show: the log handlers of a run, one line per epoch, and
which metrics are left off the console."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


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
