"""Reading what a run left on disk, for the tests."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from trainlab import checkpoint_files
from trainlab.parts import LoopState


def saved_history(saved: Path | dict[str, Any]) -> list[dict[str, float]]:
    """The per-epoch records a checkpoint (a file, or one loaded) holds."""
    ckpt = checkpoint_files.load(saved) if isinstance(saved, Path) else saved
    return LoopState.from_state_dict(ckpt["loop"]).history


def csv_rows(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    """metrics.csv's header and rows, as read by the csv module (what pandas.read_csv sees)."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def csv_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as tag -> [(step, value)], time/* left out, values as TensorBoard keeps
    them (float32), for comparing with tests/test_resume.tb_scalars."""
    header, rows = csv_rows(run_dir)
    tags = [t for t in header if t != "step" and not t.startswith("time/")]
    return {
        tag: [(int(r["step"]), float(np.float32(r[tag]))) for r in rows if r[tag] != ""]
        for tag in tags
    }
