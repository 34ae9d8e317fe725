"""Trainer options do what their YAML comment says, each shown by its effect on a tiny run:
gradient clipping clips to the norm, min_delta decides what counts as better, validation and
checkpoints follow their cadence, progress=none prints no progress, a resume may not change
the precision unasked, and nan_skip_limit bounds the skipped steps."""

from __future__ import annotations

import json
import re

import pytest
import torch

from runs import saved_history
from test_resume import poison_training_forward
from trainlab import checkpoint_files, rundir, train
from trainlab.errors import Diverged

MLP = ["model=mlp", "model.dropout=0.0"]


def trained(make_cfg, tmp_path, name: str, *overrides: str):
    run_dir = rundir.claim(tmp_path / name)
    results = train.run(make_cfg(*MLP, *overrides), run_dir, launch=None)
    return run_dir, results


def weights(run_dir) -> torch.Tensor:
    model = checkpoint_files.load(run_dir / "checkpoints" / "last.pt")["model"]
    return torch.cat([v.flatten() for v in model.values()])


def test_gradient_clipping_clips_the_update_to_the_norm(make_cfg, tmp_path):
    # One plain SGD step of lr 1 from the same weights and batch: the update is the clipped
    # gradient, so two clip norms give updates along one direction, 0.05 and 0.1 long.
    step = ["optimizer=sgd", "optimizer.momentum=0.0", "optimizer.lr=1.0", "trainer.max_steps=1"]
    small, _ = trained(make_cfg, tmp_path, "a", *step, "trainer.grad_clip_norm=0.05")
    large, _ = trained(make_cfg, tmp_path, "b", *step, "trainer.grad_clip_norm=0.1")
    free, _ = trained(make_cfg, tmp_path, "c", *step, "trainer.grad_clip_norm=null")
    w1, w2, w3 = weights(small), weights(large), weights(free)
    assert torch.linalg.vector_norm(w2 - w1).item() == pytest.approx(0.05, rel=1e-3)
    start = 2 * w1 - w2  # the weights before the step
    assert torch.linalg.vector_norm(w3 - start).item() > 0.2  # unclipped: a longer step


def test_min_delta_decides_what_counts_as_an_improvement(make_cfg, tmp_path):
    common = ["trainer.max_epochs=4", "trainer.early_stopping.patience=1"]
    _, strict = trained(make_cfg, tmp_path, "strict", *common,
                        "trainer.early_stopping.min_delta=0.5")  # fmt: skip
    history = saved_history(tmp_path / "strict" / "checkpoints" / "last.pt")
    assert history[1]["val/acc"] > history[0]["val/acc"]  # better, but not by 0.5
    assert strict["stopped_early"] and strict["epochs"] == 2 and strict["best"]["epoch"] == 1


def test_validation_and_checkpoints_follow_their_cadence(make_cfg, tmp_path):
    run_dir, results = trained(
        make_cfg, tmp_path, "run", "trainer.max_epochs=4", "trainer.val_every_epochs=2",
        "trainer.checkpoint.every_n_epochs=2", "trainer.checkpoint.keep_last=5",
    )  # fmt: skip
    history = saved_history(run_dir / "checkpoints" / "last.pt")
    validated = [r["epoch"] for r in history if "val/acc" in r]
    assert validated == [2, 4] and len(history) == 4
    manifest = checkpoint_files.read_manifest(run_dir / "checkpoints")
    assert sorted(e["step"] for e in manifest["files"].values()) == [72, 144]
    assert results["best"]["epoch"] in (2, 4)


def test_progress_none_prints_no_progress(make_cfg, tmp_path, capsys):
    trained(make_cfg, tmp_path, "lines", "trainer.progress=lines", "trainer.max_epochs=1")
    lines = capsys.readouterr().out
    trained(make_cfg, tmp_path, "none", "trainer.progress=none", "trainer.max_epochs=1")
    quiet = capsys.readouterr().out
    progress = re.compile(r"^epoch 1/1  step \d+/36", re.MULTILINE)
    assert progress.search(lines) and not progress.search(quiet)
    assert "summary" in quiet  # the run still says what it did


def test_a_resume_may_not_change_the_precision_unasked(make_cfg, tmp_path, capsys):
    run_dir, _ = trained(make_cfg, tmp_path, "run", "trainer.max_epochs=1")
    assert train.resume(run_dir, ["trainer.max_epochs=2", "trainer.precision=bf16"], [], []) == 2
    err = capsys.readouterr().err
    assert "trainer.precision (fp32 -> bf16)" in err and "--allow-change trainer.precision" in err
    allowed = ["trainer.precision"]
    assert (
        train.resume(run_dir, ["trainer.max_epochs=2", "trainer.precision=bf16"], allowed, []) == 0
    )
    attempt = json.loads((run_dir / "run.json").read_text())["attempts"][-1]
    assert "precision changed from fp32 to bf16" in " ".join(attempt["notes"])


def test_nan_skip_limit_bounds_the_skipped_steps(make_cfg, tmp_path, monkeypatch):
    poison_training_forward(monkeypatch, at_call=5)  # one NaN batch: skipped
    _, results = trained(make_cfg, tmp_path, "one", "trainer.nan_policy=skip",
                         "trainer.nan_skip_limit=1", "trainer.max_epochs=1")  # fmt: skip
    assert results["steps"] == 35
    poison_training_forward(monkeypatch, at_call=5)
    with pytest.raises(Diverged, match=r"\(0 skipped before\)"):  # a limit of 0 skips none
        trained(make_cfg, tmp_path, "none", "trainer.nan_policy=skip",
                "trainer.nan_skip_limit=0", "trainer.max_epochs=1")  # fmt: skip
