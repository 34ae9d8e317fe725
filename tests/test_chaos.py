"""Real processes, real signals: SIGTERM stops gracefully (exit 143) and resumes exactly; a run
SIGKILLed at random moments, saves included, and requeued each time with trainer.resume=auto
ends bitwise equal to the run that was never stopped."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from test_resume import assert_same_run
from trainlab import checkpoint_files, rundir, train

pytestmark = pytest.mark.slow

RUN = [
    "model=mlp", "model.dropout=0.3", "scheduler=cosine", "scheduler.interval=step",
    "trainer.num_threads=1", "trainer.log_every_n_steps=7",
]  # fmt: skip


def start(run_dir: Path, data_dir: Path, *overrides: str) -> subprocess.Popen:
    args = [f"hydra.run.dir={run_dir}", f"paths.data_dir={data_dir}", *RUN, *overrides]
    return subprocess.Popen(
        [sys.executable, "-m", "trainlab", "train", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(
    path: Path, text: str, count: int, proc: subprocess.Popen, timeout: float = 120
) -> bool:
    """Wait until `text` occurs `count` times in the file; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().count(text) >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError(f"{text!r} x{count} never appeared in {path}")


def wait_for_a_save(run_dir: Path, after: tuple[str, int] | None, proc, timeout: float = 120):
    """Wait until the manifest commits a checkpoint newer than `after` (or the process ends):
    progress measured in the run's own steps, whatever the machine's speed or load."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if newest_checkpoint(run_dir) != after:
            return
        time.sleep(0.02)


def newest_checkpoint(run_dir: Path) -> tuple[str, int] | None:
    """(file, step) of the newest resumable checkpoint the manifest commits; None before one."""
    files = checkpoint_files.read_manifest(run_dir / "checkpoints")["files"]
    steps = [(e["step"], name) for name, e in files.items() if e.get("resumable", True)]
    return (max(steps)[1], max(steps)[0]) if steps else None


def straight_run(make_cfg, run_dir: Path, *overrides: str) -> None:
    """The uninterrupted run, in this process (same code, same thread count: same numbers)."""
    train.run(make_cfg(*RUN, *overrides), rundir.claim(run_dir), launch=None)


def test_sigterm_saves_exits_143_and_resumes_exactly(tmp_path, data_dir, make_cfg):
    length = ["trainer.max_epochs=8", "trainer.checkpoint.every_n_steps=5"]
    straight_run(make_cfg, tmp_path / "straight", *length)

    stopped = start(tmp_path / "stopped", data_dir, *length)
    assert wait_for(tmp_path / "stopped" / "train.log", "epoch 2/", 1, stopped)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=60) == 143
    status = json.loads((tmp_path / "stopped" / "status.json").read_text())
    assert status == status | {"status": "interrupted", "reason": "SIGTERM"}
    manifest = checkpoint_files.read_manifest(tmp_path / "stopped" / "checkpoints")
    assert manifest["files"][manifest["last"]]["step"] < 8 * 36

    done = run_cli("resume", str(tmp_path / "stopped"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def test_ten_random_sigkills_and_requeues_end_bitwise_equal(tmp_path, data_dir, make_cfg):
    length = ["trainer.max_epochs=25", "trainer.checkpoint.every_n_steps=3", "trainer.resume=auto"]
    straight_run(make_cfg, tmp_path / "straight", *length)

    run_dir, rng, kills, attempt = tmp_path / "chaos", random.Random(0), 0, 0
    newest = [None]  # per attempt: the newest committed checkpoint when it began
    while True:
        attempt += 1
        proc = start(run_dir, data_dir, *length)
        started = wait_for(run_dir / "train.log", "run folder:", attempt, proc)
        if kills < 10 and started:
            if kills % 2:  # every other kill after a save of this attempt's own (else, under
                wait_for_a_save(run_dir, newest[-1], proc)  # load, all could land in start-up)
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                kills += 1
                newest.append(newest_checkpoint(run_dir))
                continue
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        break
    assert kills == 10, f"the run finished after {kills} kills; make it longer"
    # Each restart continued from the newest checkpoint the kill left, never from scratch or
    # an older one; and the kills did land after some saves, or this proves nothing.
    attempts = (run_dir / "train.log").read_text().split("run folder:")[1:]
    assert len(attempts) == attempt
    for log, saved in zip(attempts, newest, strict=True):
        resumed = re.search(r"resuming from (\S+): epoch \d+, step (\d+)", log)
        assert (resumed and (resumed[1], int(resumed[2]))) == (saved or None), log[:300]
    assert sum(saved is not None for saved in newest) >= 5, newest
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert_same_run(tmp_path / "straight", run_dir)
    assert len(list((run_dir / ".hydra").glob("attempt-*"))) == attempt - 1
