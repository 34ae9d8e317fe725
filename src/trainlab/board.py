"""`trainlab tensorboard [DIR]`: TensorBoard over run folders, on 127.0.0.1 unless asked
otherwise: event files hold configs, paths and metrics that are nobody else's business."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def serve(logdir: Path, port: int, bind_all: bool) -> int:
    from tensorboard import program

    if not logdir.exists():
        print(f"error: {logdir}: no such folder; give a run, a sweep or outputs/", file=sys.stderr)
        return 2
    if bind_all:
        print(
            "warning: --bind-all serves on every network interface: anyone who can reach this "
            "machine can read these runs. Prefer an SSH tunnel to 127.0.0.1.",
            file=sys.stderr,
        )
    where = ["--bind_all"] if bind_all else ["--host", "127.0.0.1"]
    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(logdir), "--port", str(port), *where])
    try:
        url = board.launch()
    except program.TensorBoardPortInUseError:
        print(
            f"error: --port {port} is in use (another TensorBoard?); pick another with "
            f"--port {port + 1}, or --port 0 for any free one",
            file=sys.stderr,
        )
        return 2
    print(f"TensorBoard {logdir} at {url} (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
