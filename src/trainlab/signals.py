"""Graceful stops: SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 set a flag. The handlers are
installed from the moment a command starts (before Hydra composes, before torch is imported)
to its end, so a signal in start-up, training, validation, the final test or between sweep jobs
is never the default "die at once": the loop reads the flag at each step boundary and saves
a checkpoint; start-up and the test read it when they are done. Every path then records status
interrupted(<signal>) and exits with 128 + the signal's number. A second SIGINT (Ctrl-C twice)
stops at once.

A handler that was installed before ours (submitit's, on a SLURM job: it requeues the job on
USR2, the time-limit signal) is handed the signal after the save, so the requeued job finds
the checkpoint (trainer.resume=auto)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from trainlab.errors import TrainlabError

log = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(TrainlabError):
    """The run stopped on a signal after saving a checkpoint."""

    def __init__(self, signum: int, previous: Any = None, saved: bool = True) -> None:
        self.signum, self.previous = signum, previous
        self.exit_code = 128 + signum
        after = "after saving a checkpoint" if saved else "before training (nothing to save)"
        super().__init__(f"stopped by {signal.Signals(signum).name} {after}")

    def hand_on(self) -> None:
        """Call the handler that was there before ours (submitit's requeue), if it was one."""
        if callable(self.previous) and self.previous is not signal.default_int_handler:
            self.previous(self.signum, None)


@dataclass
class StopRequest:
    signum: int | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def check(self, saved: bool = True) -> None:
        """Raise Interrupted if a stop was asked for (call it after a checkpoint, or where
        there is nothing to save: saved=False)."""
        if self.signum is not None:
            raise Interrupted(self.signum, self.previous.get(self.signum), saved)


_active: StopRequest | None = None  # the request of the outermost graceful_stop()


@contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Install the handlers for the duration (main thread only; elsewhere signals stay as they
    were and the request is never set). Nested, it yields the outer request: a signal that came
    during start-up (cli) or between sweep jobs is still seen by the run."""
    global _active
    if _active is not None:
        yield _active
        return
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        request.signum = request.signum or signum
        log.info(
            f"got {signal.Signals(signum).name}: saving at the next step boundary, then "
            "stopping (Ctrl-C again stops at once)"
        )

    request.previous = {s: signal.signal(s, handle) for s in HANDLED}
    _active = request
    try:
        yield request
    finally:
        _active = None
        for s, handler in request.previous.items():
            signal.signal(s, handler)
