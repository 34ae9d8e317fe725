"""Progress while an epoch runs (trainer.progress): a live bar with loss, accuracy, it/s and
ETA on a terminal; a plain line at each log point where output is not a terminal (CI, a
file); nothing on ranks other than 0. The numbers shown are the ones logged to TensorBoard at
the log points, so the bar never reads the device between them. And the loop's clock: the
seconds it trains and the run's wall time, over every attempt."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from trainlab.console import per_label

if TYPE_CHECKING:
    from trainlab.parts import LoopState

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, mode: str, max_epochs: int | None, steps_per_epoch: int) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.max_epochs, self.total = mode, max_epochs, steps_per_epoch
        self.bar: Any = None
        self.epoch, self.done, self.started, self.start_done = 0, 0, 0.0, 0

    def start_epoch(self, epoch: int, done: int) -> None:
        """Epoch `epoch` (0-based) starts, with `done` of its steps already taken (resume)."""
        self.epoch, self.done, self.start_done = epoch + 1, done, done
        self.started = time.perf_counter()
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total, initial=done, desc=f"epoch {self._of()}", leave=False,
                dynamic_ncols=True, unit="step", file=sys.stderr,
            )  # fmt: skip

    def advance(self) -> None:
        """One optimizer step done."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def show(self, scalars: dict[str, float]) -> None:
        """The train/* means of the last log interval."""
        shown = {
            k.removeprefix("train/"): v
            for k, v in scalars.items()
            if k.startswith("train/") and not per_label(k)
        }
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()}, refresh=False)
        elif self.mode == "lines":
            rate = (self.done - self.start_done) / max(time.perf_counter() - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            values = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
            log.info(
                f"epoch {self._of()}  step {self.done}/{self.total}  {values}  "
                f"{rate:.1f} it/s  eta {eta:.1f}s"
            )

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _of(self) -> str:
        return f"{self.epoch}/{self.max_epochs}" if self.max_epochs else str(self.epoch)


class Clock:
    """state.train_s, the seconds spent in fit, and state.wall_s, the seconds of the run's
    attempts from each one's start, both over every attempt, counted in one place; and the
    line that says how long this attempt's start-up took."""

    def __init__(self, state: LoopState, started: float) -> None:
        self.last, self.first_step = time.perf_counter(), state.step
        self.started, self.earlier_s = started, state.wall_s

    def tick(self, state: LoopState) -> None:
        now = time.perf_counter()
        if self.first_step is not None:
            log.info(f"first step {now - self.started:.1f}s after start")
            self.first_step = None
        state.train_s, self.last = state.train_s + now - self.last, now
        state.wall_s = self.earlier_s + now - self.started
