"""The reporting seam: metrics.csv next to the event files, the same points in both, cut on
resume as the events are purged, and a sink of one's own added in one place."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from runs import csv_rows, csv_scalars, saved_history
from test_resume import interrupt_at, tb_scalars
from trainlab import metrics, rundir, train
from trainlab.metrics import CsvSink, Events, Sink

RUN = ["model=mlp", "trainer.log_every_n_steps=7", "trainer.checkpoint.every_n_steps=10"]


def test_metrics_csv_rows_equal_the_event_files_scalars(make_cfg, tmp_path):
    run_dir = rundir.claim(tmp_path / "run")
    results = train.run(make_cfg(*RUN), run_dir, launch=None)
    header, rows = csv_rows(run_dir)
    assert header[0] == "step"
    assert {"train/loss", "train/acc", "lr/group0", "val/acc", "time/epoch_s", "test/acc",
            "best/val/acc"} <= set(header)  # fmt: skip
    # One row per logged step, in order: every 7th step, each epoch's end, the summary after.
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == results["steps"] + 1
    assert {7, 14, results["steps"] // 2, results["steps"]} <= set(steps)
    tb = tb_scalars(run_dir)
    assert csv_scalars(run_dir) == tb and len(tb["train/loss"]) > 5
    epoch_rows = [float(r["val/acc"]) for r in rows if r["val/acc"]]
    assert epoch_rows == [r["val/acc"] for r in saved_history(run_dir / "checkpoints/last.pt")]


def test_a_resumed_run_has_no_duplicate_or_missing_csv_rows(make_cfg, tmp_path, monkeypatch):
    straight = rundir.claim(tmp_path / "straight")
    train.run(make_cfg(*RUN), straight, launch=None)
    run_dir = rundir.claim(tmp_path / "run")
    interrupt_at(monkeypatch, 45, "crash")  # 5 steps past the checkpoint at step 40
    with pytest.raises(SystemExit):
        train.run(make_cfg(*RUN), run_dir, launch=None)
    monkeypatch.undo()
    _, crashed = csv_rows(run_dir)
    assert int(crashed[-1]["step"]) == 42  # the crashed attempt logged past its checkpoint
    assert train.resume(run_dir, [], [], argv=["trainlab", "resume"]) == 0
    a, b = csv_scalars(straight), csv_scalars(run_dir)
    assert a == b and a == tb_scalars(run_dir)
    steps = [int(r["step"]) for r in csv_rows(run_dir)[1]]
    assert steps == sorted(set(steps)) == [int(r["step"]) for r in csv_rows(straight)[1]]


def test_a_re_paced_resume_drops_the_rows_logged_after_the_checkpoint(
    make_cfg, tmp_path, monkeypatch
):
    """A deterministic resume logs what the crashed attempt logged, so only a resume that logs
    at other steps shows whether those rows were dropped."""
    run_dir = rundir.claim(tmp_path / "run")
    interrupt_at(monkeypatch, 45, "crash")  # checkpoint at 40, rows up to 42 written
    with pytest.raises(SystemExit):
        train.run(make_cfg(*RUN), run_dir, launch=None)
    monkeypatch.undo()
    pace = ["trainer.log_every_n_steps=5"]
    assert train.resume(run_dir, pace, [], argv=["trainlab", "resume"]) == 0
    steps = [int(r["step"]) for r in csv_rows(run_dir)[1]]
    assert 42 not in steps and {35, 36, 45, 50} <= set(steps)
    assert csv_scalars(run_dir) == tb_scalars(run_dir)


def test_a_start_over_in_place_keeps_no_row_of_the_attempt_before(make_cfg, tmp_path):
    run_dir = rundir.claim(tmp_path / "run")
    (run_dir / "metrics.csv").write_text("step,train/loss\n3,9.0\n")
    (run_dir / "config.yaml").write_text("seed: 0\n")  # a run stopped before its first save
    train.run(make_cfg(*RUN, "trainer.max_epochs=1"), run_dir, launch=None)
    assert csv_scalars(run_dir) == tb_scalars(run_dir)
    assert 3 not in [step for step, _ in csv_scalars(run_dir)["train/loss"]]


def test_the_csv_sink_drops_purged_steps_and_a_row_a_kill_cut_in_half(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,train/loss,val/acc\n5,0.5,\n10,0.25,0.75\n15,0.125,\n20,0.0")
    sink = CsvSink(path, purge_step=16)  # resumed from a checkpoint at step 15
    sink.scalars({"train/loss": 0.1}, 20)
    sink.close()
    assert path.read_text() == (
        "step,train/loss,val/acc\n5,0.5,\n10,0.25,0.75\n15,0.125,\n20,0.1,\n"
    )
    hostile = tmp_path / "hostile.csv"  # a file someone else wrote: what does not parse is dropped
    hostile.write_text("step,train/loss\n5,0.5\nsix,0.1\n7,not a number\n\x00\x01\n8,0.25\n")
    sink = CsvSink(hostile, purge_step=100)
    sink.close()
    assert hostile.read_text() == "step,train/loss\n5,0.5\n8,0.25\n"
    half = tmp_path / "half.csv"
    half.write_text("step,train/loss\n5,0.5\n10,0.2")  # no newline: the kill came mid-row
    sink = CsvSink(half, purge_step=100)
    sink.close()
    assert half.read_text() == "step,train/loss\n5,0.5\n"


def test_the_csv_sink_appends_and_widens_its_header_when_a_tag_comes_later(tmp_path):
    path = tmp_path / "metrics.csv"
    sink = CsvSink(path, purge_step=None)
    sink.scalars({"train/loss": 1.0}, 1)
    sink.flush()
    sink.scalars({"train/loss": 0.5}, 2)
    sink.flush()
    assert path.read_text() == "step,train/loss\n1,1.0\n2,0.5\n"
    sink.scalars({"val/acc": 0.25}, 2)  # the epoch's end, at the step already written
    sink.scalars({"train/loss": 0.25}, 3)
    sink.close()
    assert path.read_text() == "step,train/loss,val/acc\n1,1.0,\n2,0.5,0.25\n3,0.25,\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_costs_the_csv_no_row(tmp_path, monkeypatch, caplog):
    path = tmp_path / "metrics.csv"
    sink = CsvSink(path, purge_step=None)
    sink.scalars({"train/loss": 1.0}, 1)
    sink.flush()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    sink.scalars({"train/loss": 0.5}, 2)
    monkeypatch.setattr(metrics.Path, "open", no_space)  # the append fails
    sink.flush()
    monkeypatch.undo()
    assert "could not write" in caplog.text and path.read_text() == "step,train/loss\n1,1.0\n"
    sink.scalars({"train/loss": 0.25}, 3)
    sink.close()  # the disk has room again: nothing logged meanwhile is lost
    assert path.read_text() == "step,train/loss\n1,1.0\n2,0.5\n3,0.25\n"


class Recording(Sink):
    """A sink of one's own: what a user adds for another logger."""

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[int, float]]] = {}
        self.texts: list[str] = []
        self.closed = False

    def scalars(self, scalars, step):
        for tag, value in scalars.items():
            self.points.setdefault(tag, []).append((step, value))

    def hparams(self, values, results, step):
        self.scalars(results, step)

    def text(self, tag, text, step):
        self.texts.append(tag)

    def close(self):
        self.closed = True


def test_a_sink_of_ones_own_gets_what_the_others_get(make_cfg, tmp_path, monkeypatch):
    added = Recording()
    real = metrics.open_events

    def with_ours(*args, **kwargs) -> Events:
        events = real(*args, **kwargs)
        events.sinks.append(added)
        return events

    monkeypatch.setattr(metrics, "open_events", with_ours)
    run_dir = rundir.claim(tmp_path / "run")
    train.run(make_cfg(*RUN, "trainer.max_epochs=1"), run_dir, launch=None)
    ours = {tag: [(s, float(np.float32(v))) for s, v in points]
            for tag, points in added.points.items() if not tag.startswith("time/")}  # fmt: skip
    assert ours == csv_scalars(run_dir) and "config" in added.texts and added.closed
