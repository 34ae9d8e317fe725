"""One owner per run folder: an exclusive flock on <run>/.trainlab.lock, held by the process
that writes there for as long as it does (train, resume, trainer.resume=auto, eval, ...). The
kernel drops it when the process dies (kill -9 included), so a lock is never stale; the file's
text (pid, host, since, command) only names the holder in a refusal. No torch import.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from trainlab.errors import ConfigError, os_reason

LOCK_FILE = ".trainlab.lock"
_held: dict[Path, int] = {}  # run folder -> the open lock file (this process holds it)


class FolderInUse(ConfigError):
    """Another process owns the run folder."""


def own(run_dir: Path, argv: list[str] | None = None, wait: bool = False) -> None:
    """Take the run folder's lock, or raise FolderInUse naming the holder (with `wait`: wait
    for the holder to let go). A no-op when this process holds it already (a callback took it
    before the task ran)."""
    key = run_dir.absolute()
    if key in _held:
        return
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot open {LOCK_FILE} there ({os_reason(e)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as e:
        holder = _holder(fd)
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(
                f"{run_dir}: cannot lock {LOCK_FILE} ({os_reason(e)}); the folder must be on a "
                "filesystem with flock (see README, Troubleshooting)"
            ) from None
        raise FolderInUse(
            f"{run_dir}: in use by {holder}; one process writes a run folder at a time: wait "
            "for it to finish, or stop it (it checkpoints on SIGTERM)"
        ) from None
    text = json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(),
         "argv": list(sys.argv if argv is None else argv)}
    )  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)
    _held[key] = fd


@contextmanager
def owning(run_dir: Path, needed: bool = True) -> Iterator[None]:
    """Hold the run folder's lock for the duration (when `needed`: a verb writing into it)."""
    mine = needed and run_dir.absolute() not in _held
    if mine:
        own(run_dir)
    try:
        yield
    finally:
        if mine:
            disown(run_dir)


def disown(run_dir: Path) -> None:
    """Let the folder go (the kernel does the same when the process ends)."""
    fd = _held.pop(run_dir.absolute(), None)
    if fd is not None:
        os.close(fd)


def holds(run_dir: Path) -> bool:
    """Whether this process holds the folder's lock."""
    return run_dir.absolute() in _held


def forget_locks() -> None:
    """In a forked child: close the inherited lock files without unlocking (the parent keeps
    its lock; the child no longer keeps it alive after the parent is gone)."""
    for fd in _held.values():
        os.close(fd)
    _held.clear()


def in_use(run_dir: Path) -> bool:
    """True while some process (this one too) holds the folder's lock."""
    if holds(run_dir):
        return True
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (
            f"pid {info['pid']} on {info['host']} since {info['since']} ({' '.join(info['argv'])})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its details are unreadable)"


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")
