"""The user-facing errors and the exit codes they map to (DESIGN.md section 7)."""

from __future__ import annotations

import errno

EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_DIVERGED = 3
EXIT_DATA = 4


class TrainlabError(Exception):
    """A problem the user can fix; the message says which key and how. No traceback."""

    exit_code = EXIT_INTERNAL


class ConfigError(TrainlabError):
    """A config value is invalid: the message starts with `key=value:`."""

    exit_code = EXIT_CONFIG


class DataError(TrainlabError):
    """Data is missing, empty, or does not match what the config declares."""

    exit_code = EXIT_DATA


class RecordWriteError(TrainlabError):
    """A run's record could not be written (disk full, read-only); the previous one is kept."""


class Diverged(TrainlabError):
    """The training loss became NaN or Inf."""

    exit_code = EXIT_DIVERGED


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its class name if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def os_reason(error: OSError) -> str:
    """An OSError in a few words for a one-line message (a full disk says so)."""
    if isinstance(error, FileExistsError) or error.errno == errno.ENOTDIR:
        return "a file is in the way: a part of that path is not a folder"
    full = " (disk full?)" if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else ""
    return f"{error.strerror or error}{full}"
