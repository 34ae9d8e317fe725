"""Exact resume: interrupted anywhere (epoch boundary, mid-epoch, right after a checkpoint,
SIGTERM), in memory or through a DataLoader, a run continues to bitwise the straight run."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runs import csv_rows, csv_scalars, saved_history
from trainlab import checkpoint, checkpoint_files, loop, parts, rundir, train
from trainlab.errors import Diverged

PATHS = {
    # dropout and a per-step cosine schedule: both need the exact RNG and scheduler state
    "memory": ["model=mlp", "model.dropout=0.3", "trainer.batch_size=200"],
    # per-sample seeded flips, batch norm buffers, dropout; 21 train images, batch 4
    "loader0": ["dataset=image_folder", "model=cnn", "model.dropout=0.3", "trainer.batch_size=4",
                "dataset.num_workers=0"],
    "loader2": ["dataset=image_folder", "model=cnn", "model.dropout=0.3", "trainer.batch_size=4",
                "dataset.num_workers=2"],
    # task=adversarial: two networks, two optimizers, two per-step schedules, the noise stream;
    # two discriminator steps per generator step (9 steps an epoch)
    "adversarial": ["experiment=mnist1d_gan", "trainer.batch_size=200",
                    "scheduler@scheduler_g=cosine", "scheduler_g.interval=step",
                    "trainer.d_steps_per_g_step=2"],
    # task=reconstruction: noise drawn per sample and epoch (dataset.corruption), 11 steps an
    # epoch of the digits
    "denoising": ["experiment=digits_dae", "trainer.batch_size=128",
                  "dataset.corruption={kind:zero,rate:0.3}"],
    # a masked autoencoder: masks drawn per sample and epoch
    "masked": ["experiment=digits_mae", "trainer.batch_size=128", "model.dim=16",
               "model.heads=2", "model.decoder_dim=8"],
    # task=contrastive: two views per sample and epoch, InfoNCE, k-NN validation
    "contrastive": ["experiment=mnist1d_contrastive", "trainer.batch_size=200"],
}  # fmt: skip
COMMON = ["scheduler=cosine", "scheduler.interval=step", "trainer.max_epochs=3",
          "trainer.checkpoint.every_n_steps=4", "trainer.log_every_n_steps=3"]  # fmt: skip
_straight: dict[str, dict] = {}


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in history]


def final(run_dir):
    ckpt = checkpoint_files.load(run_dir / "checkpoints" / "last.pt")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return ckpt, metrics


TIMINGS = ("train_s", "checkpoint_s", "wall_s")


def untimed_tree(x):
    """x without its wall-clock values: timings differ between any two runs."""
    if isinstance(x, dict):
        return {k: untimed_tree(v) for k, v in x.items()
                if k not in TIMINGS and not str(k).startswith("time/")}  # fmt: skip
    return [untimed_tree(v) for v in x] if isinstance(x, list | tuple) else x


def assert_equal_tree(a, b, where: str) -> None:
    """Bitwise equal: tensors by torch.equal, containers element by element."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_equal_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(a_dir, b_dir):
    """Everything a run leaves is the straight run's, timings aside: last.pt (weights,
    optimizer state and param_groups, scheduler, scaler, loop counters, the RNG streams it
    ends with), best.pt, all of metrics.json and every TensorBoard scalar's values."""
    (a, ma), (b, mb) = final(a_dir), final(b_dir)
    # every stateful part, a step's extra state (a GAN's optimizer_g, noise) included
    assert a.keys() == b.keys()
    for key in a.keys() - {"loop", "config", "environment"}:
        assert_equal_tree(a[key], b[key], f"last.pt {key}")
    loop_a, loop_b = ({k: v for k, v in c["loop"].items() if k != "history"} for c in (a, b))
    assert_equal_tree(untimed_tree(loop_a), untimed_tree(loop_b), "last.pt loop")
    assert untimed(saved_history(a)) == untimed(saved_history(b))
    best_a, best_b = (checkpoint_files.load(d / "checkpoints" / "best.pt") for d in (a_dir, b_dir))
    for key in ("model", "optimizer", "rng"):
        assert_equal_tree(best_a[key], best_b[key], f"best.pt {key}")
    assert untimed_tree(ma) == untimed_tree(mb)
    tb_a, tb_b = tb_scalars(a_dir), tb_scalars(b_dir)
    assert tb_a.keys() == tb_b.keys() and "train/loss" in tb_a
    assert {t.split("/")[0] for t in tb_a} >= {"train", "val", "test"}
    for tag in tb_a:
        assert tb_a[tag] == tb_b[tag], tag
    # metrics.csv: the same points as the events, in the resumed run too (no step twice, none
    # missing: its rows are cut at the checkpoint as the events are purged).
    for run_dir, tb in ((a_dir, tb_a), (b_dir, tb_b)):
        assert csv_scalars(run_dir) == tb, f"{run_dir.name}: metrics.csv differs from tb/"
        steps = [int(r["step"]) for r in csv_rows(run_dir)[1]]
        assert steps == sorted(set(steps)), f"{run_dir.name}: metrics.csv repeats a step"


def tb_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every untimed scalar in the run's events: tag -> [(step, value)]."""
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
        if not tag.startswith("time/")
    }


def tb_steps(run_dir, tag) -> list[int]:
    return [step for step, _ in tb_scalars(run_dir)[tag]]


def straight_run(path, make_cfg, tmp_path_factory):
    if path not in _straight:
        cfg = make_cfg(*PATHS[path], *COMMON)
        run_dir = rundir.claim(tmp_path_factory.mktemp("straight") / path)
        results = train.run(cfg, run_dir, launch=None)
        _straight[path] = {"dir": run_dir, "steps_per_epoch": results["steps"] // 3}
    return _straight[path]


def interrupt_at(monkeypatch, call: int, how: str):
    """Make the call-th optimizer step (of any step function) crash (a hard stop, nothing
    saved) or send this process SIGTERM (a graceful stop: the loop saves at the step
    boundary)."""
    real, calls = loop._optimizer_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            if how == "crash":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_optimizer_step", step)


def crash_then_resume(cfg, run_dir, monkeypatch, call: int, then=None) -> None:
    """Train cfg in run_dir until its call-th step crashes (a hard stop: nothing saved then),
    take the crash's patch (and every other) back, apply `then(monkeypatch)` (a negative
    control's sabotage, or what the test needs again), and resume to the end."""
    interrupt_at(monkeypatch, call, "crash")
    with pytest.raises(SystemExit):
        train.run(cfg, run_dir, launch=None)
    monkeypatch.undo()
    if then is not None:
        then(monkeypatch)
    assert train.resume(run_dir, [], [], argv=["trainlab", "resume"]) == 0


# (how, which step call to interrupt, as a function of the steps per epoch S).
# every_n_steps=4: checkpoints at 4, 8, ...; epochs end at S, 2S.
POSITIONS = {
    "epoch_boundary": ("crash", lambda s: 2 * s + 1),  # first step of epoch 3
    "mid_epoch": ("crash", lambda s: s + 3 + 4 - (s + 3) % 4 + 2),  # 2 past a mid-epoch checkpoint
    "right_after_checkpoint": ("crash", lambda s: s + 4 - s % 4 + 1),
    "sigterm": ("signal", lambda s: s + 2),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("position", POSITIONS)
def test_resume_matrix(path, position, make_cfg, tmp_path, tmp_path_factory, monkeypatch):
    straight = straight_run(path, make_cfg, tmp_path_factory)
    how, call = POSITIONS[position]
    cfg = make_cfg(*PATHS[path], *COMMON)
    run_dir = rundir.claim(tmp_path / "run")
    interrupt_at(monkeypatch, call(straight["steps_per_epoch"]), how)
    with pytest.raises(SystemExit) as info:
        train.run(cfg, run_dir, launch=None)
    monkeypatch.undo()
    status = json.loads((run_dir / "status.json").read_text())
    if how == "signal":
        assert info.value.code == 143 and status["reason"] == "SIGTERM"
        assert (
            checkpoint_files.read_manifest(run_dir / "checkpoints")["last"]
            == f"step_{straight['steps_per_epoch'] + 2}.pt"
        )
    else:
        assert info.value.code == 130
    assert status["status"] == "interrupted"

    assert train.resume(run_dir, [], [], argv=["trainlab", "resume"]) == 0
    assert_same_run(straight["dir"], run_dir)


def test_without_the_rng_restore_the_matrix_would_fail(
    make_cfg, tmp_path, tmp_path_factory, monkeypatch
):
    """Negative control: the same mid-epoch resume with restore_rng disabled differs."""
    straight = straight_run("memory", make_cfg, tmp_path_factory)
    cfg = make_cfg(*PATHS["memory"], *COMMON)
    run_dir = rundir.claim(tmp_path / "run")
    crash_then_resume(
        cfg, run_dir, monkeypatch, straight["steps_per_epoch"] + 6,
        then=lambda m: m.setattr(checkpoint, "restore_rng", lambda state: None),
    )  # fmt: skip
    with pytest.raises(AssertionError):
        assert_same_run(straight["dir"], run_dir)


def test_a_corrupt_newest_checkpoint_resumes_from_the_one_before_exactly(
    make_cfg, tmp_path, tmp_path_factory, monkeypatch
):
    straight = straight_run("memory", make_cfg, tmp_path_factory)
    s = straight["steps_per_epoch"]
    cfg = make_cfg(*PATHS["memory"], *COMMON)
    run_dir = rundir.claim(tmp_path / "run")
    interrupt_at(monkeypatch, 2 * s + 3, "crash")
    with pytest.raises(SystemExit):
        train.run(cfg, run_dir, launch=None)
    monkeypatch.undo()
    newest = checkpoint_files.read_manifest(run_dir / "checkpoints")["last"]
    path = run_dir / "checkpoints" / newest
    path.write_bytes(path.read_bytes()[:100])
    assert train.resume(run_dir, [], [], argv=["trainlab", "resume"]) == 0
    assert f"{newest}: size or sha256 differs" in (run_dir / "train.log").read_text()
    assert_same_run(straight["dir"], run_dir)
    # Events the crashed attempt wrote after the older checkpoint were purged: no step twice.
    for tag in ("train/loss", "lr/group0", "val/loss"):
        steps = tb_steps(run_dir, tag)
        assert steps == sorted(set(steps)) == tb_steps(straight["dir"], tag), tag
    attempts = json.loads((run_dir / "run.json").read_text())["attempts"]
    assert attempts[-1]["resumed_from"] != newest


def test_resume_refuses_a_changed_model_and_continues_with_more_epochs(make_cfg, tmp_path, capsys):
    base = ["model=mlp", "model.dropout=0.3", "trainer.max_epochs=2"]
    run_dir = rundir.claim(tmp_path / "run")
    train.run(make_cfg(*base), run_dir, launch=None)
    capsys.readouterr()

    assert train.resume(run_dir, ["model.hidden_sizes=[50,50]"], [], argv=[]) == 2
    err = capsys.readouterr().err
    assert "resume would change model.hidden_sizes ([100, 100] -> [50, 50])" in err
    assert "--allow-change model.hidden_sizes" in err
    assert train.resume(run_dir, ["trainer.max_epochs=1"], [], argv=[]) == 2
    assert "the run has trained 2 epochs already" in capsys.readouterr().err

    assert train.resume(run_dir, ["trainer.max_epochs=4"], [], argv=["trainlab", "resume"]) == 0
    longer = rundir.claim(tmp_path / "longer")
    train.run(make_cfg(*base[:-1], "trainer.max_epochs=4"), longer, launch=None)
    assert_same_run(longer, run_dir)
    assert json.loads((run_dir / "run.json").read_text())["attempts"][-1]["changed"] == {
        "trainer.max_epochs": [2, 4]
    }
    assert "max_epochs: 4" in (run_dir / "config.yaml").read_text()
    for tag in ("train/loss", "val/acc", "test/acc", "best/val/acc"):
        steps = tb_steps(run_dir, tag)
        assert steps == sorted(set(steps)), tag
    assert tb_steps(run_dir, "test/acc") == [4 * 36 + 1]  # the 2-epoch summary was purged


def test_a_nan_stops_the_run_before_the_step_and_keeps_the_last_good_checkpoint(
    make_cfg, tmp_path, monkeypatch
):
    poison_training_forward(monkeypatch, at_call=50)
    cfg = make_cfg("model=mlp", "trainer.checkpoint.every_n_steps=10")
    run_dir = rundir.claim(tmp_path / "run")
    with pytest.raises(
        Diverged, match=r"train/loss is nan at step 50 \(epoch 2, batch 14\)"
    ) as info:
        train.run(cfg, run_dir, launch=None)
    assert info.value.exit_code == 3
    assert json.loads((run_dir / "status.json").read_text())["status"] == "diverged"
    ckpt, entry = checkpoint_files.load_latest(run_dir / "checkpoints")
    assert entry["step"] == 40
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nan_policy_skip_skips_the_step_and_counts_it(make_cfg, tmp_path, monkeypatch):
    poison_training_forward(monkeypatch, at_call=50)
    cfg = make_cfg("model=mlp", "trainer.nan_policy=skip", "trainer.max_epochs=2")
    results = train.run(cfg, rundir.claim(tmp_path / "run"), launch=None)
    assert results["steps"] == 2 * 36 - 1  # one batch did not become a step
    ckpt = checkpoint_files.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["loop"]["nan_skips"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def poison_training_forward(monkeypatch, at_call: int):
    """The model returns NaN on its at_call-th forward pass in training mode."""
    real_build, calls = parts.build_model, []

    def build(cfg):
        model = real_build(cfg)

        def hook(module, args, output):
            if module.training:
                calls.append(1)
                if len(calls) == at_call:
                    return output * float("nan")
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(parts, "build_model", build)


@pytest.mark.parametrize("on_error", ["stop", "continue"])
def test_a_failed_save_stops_or_continues_and_keeps_the_previous_checkpoint(
    make_cfg, tmp_path, monkeypatch, on_error
):
    real = checkpoint_files.write_atomic

    def full_disk_from_epoch_2(path, payload, **kwargs):
        if path.name == "step_72.pt":
            raise OSError(28, "No space left on device")
        return real(path, payload, **kwargs)

    monkeypatch.setattr(checkpoint_files, "write_atomic", full_disk_from_epoch_2)
    cfg = make_cfg("model=mlp", "trainer.max_epochs=3", f"trainer.checkpoint.on_error={on_error}")
    run_dir = rundir.claim(tmp_path / "run")
    if on_error == "stop":
        with pytest.raises(
            checkpoint_files.CheckpointSaveError, match=r"step_72\.pt \(No space left on device\)"
        ):
            train.run(cfg, run_dir, launch=None)
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "failed" and "No space left on device" in status["reason"]
        assert checkpoint_files.load_latest(run_dir / "checkpoints")[1]["step"] == 36
    else:
        results = train.run(cfg, run_dir, launch=None)
        assert results["epochs"] == 3
        assert "training goes on" in (run_dir / "train.log").read_text()
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_resume_adopts_the_thread_count_the_run_was_trained_with(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg("model=mlp", "trainer.num_threads=null", "trainer.max_epochs=2")
    run_dir = rundir.claim(tmp_path / "run")
    torch.set_num_threads(2)
    interrupt_at(monkeypatch, 40, "crash")
    with pytest.raises(SystemExit):
        train.run(cfg, run_dir, launch=None)
    monkeypatch.undo()
    torch.set_num_threads(1)  # "another machine"
    try:
        assert train.resume(run_dir, [], [], argv=[]) == 0
        assert torch.get_num_threads() == 2
        log_text = (run_dir / "train.log").read_text()
        assert (
            "using the 2 CPU threads the run was trained with (this machine's default is 1)"
            in log_text
        )
    finally:
        torch.set_num_threads(1)


def test_a_tampered_config_target_is_refused_before_anything_is_imported(
    make_cfg, tmp_path, capsys
):
    run_dir = rundir.claim(tmp_path / "run")
    train.run(make_cfg("model=mlp", "trainer.max_epochs=1"), run_dir, launch=None)
    stored = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(stored.replace("trainlab.models.MLP", "os.system"))
    assert train.resume(run_dir, ["trainer.max_epochs=2"], [], argv=[]) == 2
    assert "model._target_=os.system: not an allowed target" in capsys.readouterr().err


def test_signal_handling_flags_then_a_second_ctrl_c_stops_at_once():
    from trainlab.signals import Interrupted, graceful_stop

    before = signal.getsignal(signal.SIGINT)
    with graceful_stop() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.signum == signal.SIGUSR1
        with pytest.raises(Interrupted) as info:
            stop.check()
        assert info.value.exit_code == 128 + signal.SIGUSR1
    with graceful_stop() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT  # the first Ctrl-C only asks
        os.kill(os.getpid(), signal.SIGINT)  # the second one stops now
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_an_allowed_optimizer_change_takes_effect_over_the_saved_state(make_cfg, tmp_path):
    run_dir = rundir.claim(tmp_path / "run")
    train.run(make_cfg("model=mlp", "trainer.max_epochs=1"), run_dir, launch=None)
    overrides = ["trainer.max_epochs=2", "optimizer.lr=0.1"]
    assert train.resume(run_dir, overrides, ["optimizer.lr"], argv=[]) == 0
    groups = checkpoint_files.load(run_dir / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.1]
