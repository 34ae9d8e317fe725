"""Precision, layout and compilation options, and the loop's deferred NaN check."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from trainlab import checkpoint_files, rundir, steps, train
from trainlab.errors import ConfigError, Diverged
from trainlab.parts import Precision
from trainlab.steps import train_step


def run(make_cfg, tmp_path, *overrides, name="run"):
    run_dir = rundir.claim(tmp_path / name)
    return run_dir, train.run(make_cfg(*overrides), run_dir, launch=None)


@pytest.mark.slow
def test_bf16_trains_the_default_model_within_a_point_of_fp32(make_cfg, tmp_path):
    # 40 of the default 100 epochs: both are past 0.9 by then, and bf16 on a CPU is slow
    # (40 epochs: 7 s in fp32, 41 s in bf16 on the 2-core VM).
    _, fp32 = run(make_cfg, tmp_path, "trainer.max_epochs=40", name="fp32")
    _, bf16 = run(
        make_cfg, tmp_path, "trainer.max_epochs=40", "trainer.precision=bf16", name="bf16"
    )
    print(f"test/acc fp32 {fp32['test']['test/acc']:.4f} bf16 {bf16['test']['test/acc']:.4f}")
    assert fp32["test"]["test/acc"] >= 0.9
    # Within one point: 10 of the 1,000 test signals. (0.918 - 0.908 is 0.010000000000000009
    # in floats: compare counts, not float differences.)
    correct = [round(r["test"]["test/acc"] * 1000) for r in (fp32, bf16)]
    assert abs(correct[0] - correct[1]) <= 10


def test_fp16_trains_checkpoints_its_grad_scaler_and_resumes_exactly(
    make_cfg, tmp_path, monkeypatch
):
    common = ["model=mlp", "trainer.precision=fp16", "trainer.max_epochs=2",
              "trainer.checkpoint.every_n_steps=10"]  # fmt: skip
    straight, results = run(make_cfg, tmp_path, *common, name="straight")
    assert results["final"]["val/acc"] > 0.2
    saved = checkpoint_files.load(straight / "checkpoints" / "last.pt")
    assert saved["grad_scaler"]["scale"] > 0 and saved["environment"]["precision"] == "fp16"

    real, calls = steps.train_step, []

    def crash_mid_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 36 + 14:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "train_step", crash_mid_epoch_2)
    crashed = rundir.claim(tmp_path / "crashed")
    with pytest.raises(SystemExit):
        train.run(make_cfg(*common), crashed, launch=None)
    monkeypatch.undo()
    assert train.resume(crashed, [], [], argv=[]) == 0
    a = checkpoint_files.load(straight / "checkpoints" / "last.pt")
    b = checkpoint_files.load(crashed / "checkpoints" / "last.pt")
    assert a["grad_scaler"] == b["grad_scaler"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_a_grad_scaler_skipped_step_is_not_divergence():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # scaled grads overflow fp16
    batch = [(torch.randn(8, 4), torch.randn(8, 1))]
    _, bad = train_step(
        model, batch, nn.MSELoss(), optimizer, None, Precision("cpu", torch.float16, scaler)
    )
    assert bad is None  # the loss was finite: not a divergence
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() < 2.0**40  # the scaler skipped the step and backed off


def test_lbfgs_refuses_fp16(make_cfg):
    from trainlab import config

    with pytest.raises(
        ConfigError, match=r"trainer\.precision=fp16: its grad scaler cannot drive LBFGS"
    ):
        config.check(make_cfg("optimizer=lbfgs", "trainer.precision=fp16"))


def test_channels_last_lays_out_images_and_model(make_cfg, tmp_path, monkeypatch):
    seen = []
    real = steps.train_step

    def spy(model, batches, *args, **kwargs):
        convs = [p for p in model.parameters() if p.dim() == 4]
        seen.append(batches[0][0].is_contiguous(memory_format=torch.channels_last))
        seen.append(bool(convs))
        seen.extend(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        # Not both at once, as a kernel over one input channel is.
        seen.extend(not p.is_contiguous() for p in convs if p.shape[1] > 1)
        return real(model, batches, *args, **kwargs)

    monkeypatch.setattr(steps, "train_step", spy)
    overrides = [
        "dataset=digits",
        "model=cnn",
        "trainer.channels_last=true",
        "trainer.max_epochs=1",
    ]
    _, results = run(make_cfg, tmp_path, *overrides)
    assert seen and all(seen)
    assert results["epochs"] == 1
    with pytest.raises(ConfigError, match=r"trainer\.channels_last=true: it lays out"):
        from trainlab import config

        config.check(make_cfg("trainer.channels_last=true"))  # MNIST-1D is not images


@pytest.mark.slow
def test_compile_trains_and_checkpoints_the_plain_module(make_cfg, tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    trained = []
    real = steps.train_step

    def spy(model, *args, **kwargs):
        trained.append(type(model).__name__)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(steps, "train_step", spy)
    run_dir, results = run(
        make_cfg, tmp_path, "model=mlp", "trainer.compile=true", "trainer.max_steps=3"
    )
    # The steps ran the compiled module, and dynamo captured its graph, forward and backward.
    assert trained == ["OptimizedModule"] * 3
    assert counters["stats"]["unique_graphs"] >= 1 and counters["aot_autograd"]["ok"] >= 1
    assert not counters["graph_break"], dict(counters["graph_break"])
    saved = checkpoint_files.load(run_dir / "checkpoints" / "last.pt")
    assert not any("_orig_mod" in key for key in saved["model"])
    assert set(saved["model"]) == {"hidden.0.0.weight", "hidden.0.0.bias", "hidden.1.0.weight",
                                   "hidden.1.0.bias", "head.weight", "head.bias"}  # fmt: skip
    assert results["steps"] == 3


def defer_the_nan_check(monkeypatch):
    """What a GPU run does: check the loss at log points and before saves, not every step."""
    real = train.build_parts

    def build(*args, **kwargs):
        parts = real(*args, **kwargs)
        parts.check_every_step = False
        return parts

    monkeypatch.setattr(train, "build_parts", build)


@pytest.mark.parametrize(("log_every", "caught_at"), [(5, "up to 50"), (20, "before step 50")])
def test_without_a_per_step_check_a_nan_is_caught_before_it_is_saved(
    make_cfg, tmp_path, monkeypatch, log_every, caught_at
):
    from test_resume import poison_training_forward

    defer_the_nan_check(monkeypatch)
    poison_training_forward(monkeypatch, at_call=48)
    cfg = [
        "model=mlp",
        "trainer.checkpoint.every_n_steps=10",
        f"trainer.log_every_n_steps={log_every}",
    ]
    run_dir = rundir.claim(tmp_path / "run")
    with pytest.raises(Diverged, match=caught_at):
        train.run(make_cfg(*cfg), run_dir, launch=None)
    ckpt, entry = checkpoint_files.load_latest(run_dir / "checkpoints")
    assert entry["step"] == 40
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_the_run_reports_its_first_step_and_checkpoint_time(make_cfg, tmp_path):
    run_dir, results = run(make_cfg, tmp_path)
    assert "first step" in (run_dir / "train.log").read_text()
    assert 0 < results["checkpoint_s"] < results["train_s"]
    env = json.loads((run_dir / "run.json").read_text())["environment"]
    assert env["tf32"] is False and env["precision"] == "fp32"
