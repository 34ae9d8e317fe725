"""Graceful stops: SIGTERM, SIGINT and SIGUSR1 set a flag that the loop reads at each step
boundary; it then saves a checkpoint, records status interrupted(<signal>) and exits with
128 + the signal's number. A second SIGINT (Ctrl-C twice) stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from trainlab.errors import TrainlabError

log = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Interrupted(TrainlabError):
    """The run stopped on a signal after saving a checkpoint."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after saving a checkpoint")


@dataclass
class StopRequest:
    signum: int | None = None

    def check(self) -> None:
        """Raise Interrupted if a stop was asked for (call it after a checkpoint)."""
        if self.signum is not None:
            raise Interrupted(self.signum)


@contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Install the handlers for the duration (main thread only; elsewhere signals stay as they
    were and the request is never set)."""
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

    previous = {s: signal.signal(s, handle) for s in HANDLED}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
