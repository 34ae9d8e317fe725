"""scripts/bench.py runs end to end at a tiny size (it is a benchmark, not a timed test: its
numbers are not checked here, only that it measures what it says and writes them down)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_bench_runs_tiny_and_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--tiny", "--repeats", "2",
         "--epochs", "2", "--skip-startup", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    variants = [row["variant"] for row in result["rows"]]
    assert variants[:3] == ["trainlab", "hand, indexing", "hand, DataLoader"]
    for row in result["rows"]:
        assert row["ms_per_step"] > 0 and row["samples_per_s"] > 0
        assert row["vs_hand_indexing"] > 0 and row["vs_hand_dataloader"] > 0
    assert all(len(times) == 2 for times in result["per_step_s"].values())  # 2 rounds x 1 epoch
    assert 0 < result["checkpoint"]["fraction"] < 1
    assert "| trainlab |" in done.stdout and "checkpoint every epoch" in done.stdout
