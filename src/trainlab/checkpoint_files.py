"""The checkpoint files: how the dict checkpoint.py builds is written (atomically, hashed in a
manifest, in a background thread, rotated) and how a file is read back and verified.

A file is loaded with torch.load(weights_only=True) and no allowlist; anything else is
refused, never unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

import torch

from trainlab import rundir
from trainlab.config import CheckpointConfig, OnError
from trainlab.errors import TrainlabError
from trainlab.rundir import write_atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class CheckpointError(TrainlabError):
    """A checkpoint is missing, corrupt, or not one of ours."""


class CheckpointSaveError(TrainlabError):
    """Writing a checkpoint failed (disk full, file too large); the previous ones are intact."""


# ---- how it is written, rotated and read ----
#
# Every save writes step_<n>.pt (a resumable state) and, for ASGD's averaged weights, also
# best_step_<n>.pt; last.pt and best.pt are hard links (copies where links fail) to the newest
# and the best. manifest.json lists each file's sha256, size, step, epoch and metric, and which
# files `last` and `best` are; it is written after the files and is the commit marker: a file
# it does not list is never loaded or deleted.


def serialize(state: dict[str, Any]) -> bytes:
    """The checkpoint file's bytes: the snapshot, taken in the training thread."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def commit(
    ckpt_dir: Path,
    payload: bytes,
    info: dict[str, Any],
    policy: CheckpointConfig,
    best: bool = False,
    best_payload: bytes | None = None,
) -> None:
    """Write `payload` as step_<n>.pt and make it last.pt; if `best`, also best.pt
    (`best_payload`, if given, is a different payload for it: ASGD's averaged weights). Then
    commit the manifest and rotate. A failed write leaves the previous files and manifest as
    they were."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(ckpt_dir)
    name = f"step_{info['step']}.pt"
    manifest["files"][name] = _write(ckpt_dir / name, payload, info, best and best_payload is None)
    _point(ckpt_dir / "last.pt", name)
    manifest["last"] = name
    if best:
        best_name = name
        if best_payload is not None:
            best_name = f"best_step_{info['step']}.pt"
            entry = _write(ckpt_dir / best_name, best_payload, info, best=True)
            manifest["files"][best_name] = entry | {"resumable": False}
        _point(ckpt_dir / "best.pt", best_name)
        manifest["best"] = best_name
    # Rotation is decided before the commit: the manifest stops naming the dropped files in
    # the same write that adds the new one, and only then are they deleted.
    dropped = _rotated_out(manifest, policy)
    for name in dropped:
        del manifest["files"][name]
    _write_manifest(ckpt_dir, manifest)
    for name in dropped:
        (ckpt_dir / name).unlink(missing_ok=True)


class Writer:
    """Writes checkpoints in a background thread, one at a time and in order: the training
    thread serialises (that is the snapshot; pickling holds the GIL, so it would gain nothing
    in a thread) and goes on while the files are written, hashed and fsynced and the manifest
    committed. A save waits for the previous one; wait() returns when everything handed over
    is committed and re-raises a failure. The thread lives as long as the writer (a daemon:
    a killed run loses at most the save in flight, which the manifest never committed)."""

    def __init__(self, ckpt_dir: Path, policy: CheckpointConfig) -> None:
        self.ckpt_dir, self.policy = ckpt_dir, policy
        self._jobs: queue.Queue = queue.Queue(maxsize=1)
        self._done = threading.Event()
        self._done.set()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(
        self, payload: bytes, info: dict[str, Any], best: bool, best_payload: bytes | None
    ) -> None:
        """Hand over serialised checkpoints; returns once the previous save is done."""
        self.wait()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="checkpoint", daemon=True)
            self._thread.start()
        self._done.clear()
        self._jobs.put((self.ckpt_dir, payload, info, self.policy, best, best_payload))

    def wait(self) -> None:
        self._done.wait()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                commit(*job)
            except BaseException as e:  # handed to the training thread by wait()
                self._error = e
            finally:
                self._done.set()


class Saver:
    """Where fit's checkpoints go, with what fixed context (`context`: the resolved config as
    YAML text, the environment), and what a failed save does (trainer.checkpoint.on_error).
    Under DDP every rank takes part in a save (it hands in its random streams and running
    sums) and rank 0 alone writes: the other ranks' Saver has no writer."""

    def __init__(
        self, directory: Path, policy: CheckpointConfig, context: dict[str, Any], main: bool
    ) -> None:
        self.directory, self.policy, self.context = directory, policy, context
        self.writer = Writer(directory, policy) if main else None

    def submit(
        self, payload: bytes, info: dict[str, Any], best: bool, best_payload: bytes | None
    ) -> None:
        """Hand one save to the writer; a failure of the previous one is reported here."""
        assert self.writer is not None
        try:
            self.writer.submit(payload, info, best, best_payload)  # waits for the previous save
        except CheckpointSaveError as e:
            self._failed(e)
            self.writer.submit(payload, info, best, best_payload)

    def drain(self) -> None:
        """Return once every save handed over is committed (or has failed, and been reported)."""
        if self.writer is None:
            return
        try:
            self.writer.wait()
        except CheckpointSaveError as e:
            self._failed(e)

    def _failed(self, error: CheckpointSaveError) -> None:
        if self.policy.on_error == OnError.stop:
            raise error
        log.warning(f"{error}; training goes on (trainer.checkpoint.on_error=continue)")


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one checkpoint after checking its size and sha256 against the manifest
    (last.pt and best.pt are checked against the files the manifest says they are)."""
    manifest = read_manifest(path.parent)
    name = {"last.pt": manifest.get("last"), "best.pt": manifest.get("best")}.get(
        path.name, path.name
    )
    entry = manifest["files"].get(name)
    if entry is None or not path.is_file():
        raise CheckpointError(f"{path}: not a committed checkpoint (not in {MANIFEST})")
    payload = path.read_bytes()
    if len(payload) != entry["size"] or hashlib.sha256(payload).hexdigest() != entry["sha256"]:
        raise CheckpointError(
            f"{path}: size or sha256 differs from {MANIFEST}: the file is truncated or corrupt"
        )
    try:
        ckpt = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a trainlab checkpoint ({e.__class__.__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"{path}: not a trainlab checkpoint of schema {SCHEMA_VERSION}")
    return ckpt


def load_latest(ckpt_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The newest resumable checkpoint that verifies, and its manifest entry. A bad one is
    reported by name and the next older one is tried; if none is good, CheckpointError says
    why, and nothing is started over."""
    manifest = read_manifest(ckpt_dir)
    entries = [(n, e) for n, e in manifest["files"].items() if e.get("resumable", True)]
    entries.sort(key=lambda item: item[1]["step"], reverse=True)
    problems = []
    for name, entry in entries:
        try:
            ckpt = load(ckpt_dir / name)
        except CheckpointError as e:
            problems.append(str(e))
            log.warning(f"checkpoint refused: {e}; trying an older one")
            continue
        if problems:
            log.warning(f"resuming from the older {name} (step {entry['step']})")
        return ckpt, entry | {"name": name}
    reasons = "; ".join(problems) if problems else f"{MANIFEST} lists none"
    raise CheckpointError(
        f"{ckpt_dir}: no good checkpoint to resume from ({reasons}). Nothing was started over; "
        "start a new run, or restore a checkpoint file from a backup"
    )


def read_manifest(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        return {"schema_version": SCHEMA_VERSION, "files": {}}
    try:
        manifest = json.loads(path.read_text())
        assert isinstance(manifest.get("files"), dict)
    except (ValueError, AssertionError) as e:
        raise CheckpointError(
            f"{path}: unreadable ({e}); the checkpoints cannot be verified"
        ) from e
    return manifest


def has_checkpoint(ckpt_dir: Path) -> bool:
    return any(e.get("resumable", True) for e in read_manifest(ckpt_dir)["files"].values())


# The files a checkpoint folder holds; sweep_temp_files removes only temp files of these.
FILES = ("step_*.pt", "best_step_*.pt", "last.pt", "best.pt", MANIFEST)


def sweep_temp_files(ckpt_dir: Path) -> list[Path]:
    """Remove the temp files an interrupted checkpoint write left (.<name>.<random>.tmp)."""
    return rundir.sweep_temp_files(ckpt_dir, FILES)


def _write(path: Path, payload: bytes, info: dict[str, Any], best: bool) -> dict[str, Any]:
    try:
        write_atomic(path, payload, sync_folder=False)  # the manifest's commit syncs the folder
    except OSError as e:
        raise CheckpointSaveError(
            f"could not write {path} ({e.strerror or e}); the checkpoints written before it are "
            f"intact{' (disk full?)' if e.errno in (errno.ENOSPC, errno.EFBIG) else ''}"
        ) from e
    entry = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload), **info}
    return entry | {"best": True} if best else entry


def _point(alias: Path, target: str) -> None:
    """Atomically make `alias` (last.pt, best.pt) the file `target` in the same folder: a hard
    link, so no bytes are written twice; a copy where the filesystem has no hard links."""
    tmp = alias.with_name(f".{alias.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(alias.with_name(target), tmp)
        os.replace(tmp, alias)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
            raise CheckpointSaveError(f"could not update {alias} ({e.strerror or e})") from e
        write_atomic(alias, alias.with_name(target).read_bytes())


def _write_manifest(ckpt_dir: Path, manifest: dict[str, Any]) -> None:
    try:
        write_atomic(ckpt_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as e:
        raise CheckpointSaveError(
            f"could not commit {ckpt_dir / MANIFEST} ({e.strerror or e}); the checkpoints "
            "committed before stay the ones loaded"
        ) from e


def _rotated_out(manifest: dict[str, Any], policy: CheckpointConfig) -> list[str]:
    """What the policy no longer keeps: never what last or best name, and only files the
    manifest lists (anything else in the folder is not ours)."""
    files = manifest["files"]
    by_step = sorted(files, key=lambda n: files[n]["step"], reverse=True)
    resumable = [n for n in by_step if files[n].get("resumable", True)]
    best = [n for n in by_step if files[n].get("best")]
    keep = {manifest.get("last"), manifest.get("best")}
    keep |= set(resumable[: max(policy.keep_last, 2)]) | set(best[: policy.top_k])
    return [n for n in files if n not in keep]
