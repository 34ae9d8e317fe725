"""The debugging switches: trainer.fast_dev_run, limit_train_batches / limit_val_batches (a
count or a fraction) and overfit_batches; each checked, and refused on resume."""

from __future__ import annotations

import json

import pytest
import torch

from runs import saved_history
from trainlab import checkpoint_files, config, loop, rundir, steps, train
from trainlab.errors import ConfigError

# mnist1d: 3600 training samples = 36 batches of 100; validation 4 batches, test 10.
TRAIN_BATCHES, VAL_BATCHES, TEST_BATCHES = 36, 4, 10


def batches_seen(monkeypatch) -> dict[str, list[list[torch.Tensor]]]:
    """What the loop feeds the model: each optimizer step's inputs, and each evaluation's
    batches by split."""
    seen: dict[str, list] = {"train": [], "val": [], "test": []}
    real_evaluate, real_step = loop.evaluate, steps.train_step

    def evaluate(model, batches, loss_fn, task, split, *args, **kwargs):
        seen[split].append([x.clone() for x, _ in batches.epoch(0)])
        return real_evaluate(model, batches, loss_fn, task, split, *args, **kwargs)

    def train_step(model, group, *args, **kwargs):
        seen["train"].append([x.clone() for x, _ in group])
        return real_step(model, group, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate)  # validation and the test (evaluation_of)
    monkeypatch.setattr(steps, "train_step", train_step)
    return seen


def test_fast_dev_run_runs_one_batch_of_each_split_and_keeps_no_checkpoint_or_event(
    make_cfg, tmp_path, monkeypatch
):
    seen = batches_seen(monkeypatch)
    saves, real_commit = [], checkpoint_files.commit

    def commit(ckpt_dir, *args, **kwargs):
        saves.append(ckpt_dir)
        return real_commit(ckpt_dir, *args, **kwargs)

    monkeypatch.setattr(checkpoint_files, "commit", commit)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    run_dir = rundir.claim(tmp_path / "run")
    cfg = make_cfg("trainer.fast_dev_run=true", "trainer.max_epochs=5", "trainer.max_steps=50")
    outcome = train.run(cfg, run_dir, launch=None)
    assert outcome["steps"] == 1 and outcome["epochs"] == 1
    assert len(seen["train"]) == 1
    assert [len(v) for v in seen["val"]] == [1] and [len(v) for v in seen["test"]] == [1]
    kept = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "run.json", "status.json", "metrics.json", "train.log"} <= kept
    assert not {"checkpoints", "tb", "metrics.csv"} & kept
    # Its checkpoints went to a folder of its own there, gone now (torch keeps caches there).
    assert not [p for p in scratch.iterdir() if p.name.startswith("trainlab-")]
    assert saves and all(str(d).startswith(str(scratch / "trainlab-")) for d in saves)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())["test"]
    assert "fast_dev_run" in (run_dir / "train.log").read_text()


@pytest.mark.parametrize(("limit", "per_epoch"), [("3", 3), ("0.25", TRAIN_BATCHES // 4)])
def test_limit_train_batches_takes_a_count_or_a_fraction_of_each_epoch(
    make_cfg, tmp_path, monkeypatch, limit, per_epoch
):
    seen = batches_seen(monkeypatch)
    # onecycle refuses to step past its length: the schedule must span the limited epochs.
    cfg = make_cfg(f"trainer.limit_train_batches={limit}", "scheduler=onecycle")
    outcome = train.run(cfg, rundir.claim(tmp_path / "run"), launch=None)
    assert outcome["steps"] == 2 * per_epoch == len(seen["train"])
    first, second = seen["train"][0][0], seen["train"][per_epoch][0]
    assert not torch.equal(first, second)  # still shuffled: each epoch its own batches
    assert [len(v) for v in seen["val"]] == [VAL_BATCHES] * 2
    assert [len(v) for v in seen["test"]] == [TEST_BATCHES]


def test_limit_val_batches_cuts_validation_and_leaves_the_test_whole(
    make_cfg, tmp_path, monkeypatch
):
    seen = batches_seen(monkeypatch)
    cfg = make_cfg("trainer.limit_val_batches=2", "trainer.limit_train_batches=2")
    train.run(cfg, rundir.claim(tmp_path / "run"), launch=None)
    assert [len(v) for v in seen["val"]] == [2, 2]
    assert [len(v) for v in seen["test"]] == [TEST_BATCHES]


def test_overfit_batches_trains_and_validates_on_the_same_batches_every_epoch(
    make_cfg, tmp_path, monkeypatch
):
    seen = batches_seen(monkeypatch)
    cfg = make_cfg("trainer.overfit_batches=2", "trainer.max_epochs=12", "model=mlp",
                   "model.dropout=0.0")  # fmt: skip
    run_dir = rundir.claim(tmp_path / "run")
    outcome = train.run(cfg, run_dir, launch=None)
    steps = seen["train"]
    assert len(steps) == 24 and outcome["steps"] == 24
    for epoch in range(1, 12):  # unshuffled: the same two batches, in the same order
        assert torch.equal(steps[2 * epoch][0], steps[0][0])
        assert torch.equal(steps[2 * epoch + 1][0], steps[1][0])
    assert not torch.equal(steps[0][0], steps[1][0])
    val = seen["val"][0]
    assert len(val) == 2 and all(torch.equal(v, t[0]) for v, t in zip(val, steps, strict=False))
    history = saved_history(run_dir / "checkpoints" / "last.pt")
    assert history[-1]["val/loss"] < 0.5 * history[0]["val/loss"]  # it memorises them
    assert [len(v) for v in seen["test"]] == [TEST_BATCHES]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0: must be a number of"),
        ("trainer.limit_val_batches=1.5", "trainer.limit_val_batches=1.5: must be a number of"),
        ("trainer.overfit_batches=-2", "trainer.overfit_batches=-2: must be a number of"),
        ("trainer.limit_train_batches=true", "trainer.limit_train_batches=True: must be a"),
        ("trainer.limit_train_batches=few", "trainer.limit_train_batches=few: must be a"),
    ],
)
def test_switch_values_are_checked(make_cfg, override, message):
    with pytest.raises(ConfigError) as info:
        config.check(make_cfg(override))
    assert str(info.value).startswith(message)


def test_overfit_batches_with_a_limit_is_refused(make_cfg):
    cfg = make_cfg("trainer.overfit_batches=2", "trainer.limit_val_batches=3")
    with pytest.raises(ConfigError, match=r"trainer.overfit_batches=2: .* must be null"):
        config.check(cfg)


def test_a_resume_refuses_every_switch_that_would_change_the_run(make_cfg, tmp_path, capsys):
    run_dir = rundir.claim(tmp_path / "run")
    train.run(make_cfg("trainer.max_epochs=1", "trainer.limit_train_batches=4"), run_dir,
              launch=None)  # fmt: skip
    capsys.readouterr()
    for override, change in [
        ("trainer.fast_dev_run=true", "trainer.fast_dev_run (False -> True)"),
        ("trainer.limit_train_batches=null", "trainer.limit_train_batches (4 -> None)"),
        ("trainer.limit_val_batches=0.5", "trainer.limit_val_batches (None -> 0.5)"),
        ("trainer.overfit_batches=2", "trainer.overfit_batches (None -> 2)"),
    ]:
        # (overfit_batches with a limit is refused by check(): drop the limit with it)
        also = ["trainer.limit_train_batches=null"] if "overfit" in override else []
        assert train.resume(run_dir, [override, *also, "trainer.max_epochs=2"], [], argv=[]) == 2
        err = capsys.readouterr().err
        assert (
            "error: resume would change " in err
            and change in err
            and f"--allow-change {override.split('=')[0]}" in err
        )
    # Unchanged, it extends as any run does.
    assert train.resume(run_dir, ["trainer.max_epochs=2"], [], argv=["trainlab", "resume"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 8
