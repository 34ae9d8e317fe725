"""What every shape of training shares with supervised runs: `trainlab eval` rebuilds the run
from its folder and reproduces its test metrics (the evaluation of the run's own shape, with
the same fixed noise, corruption or neighbours), the CLI runs each experiment, and a resume
changing the generator's learning rate applies it."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from trainlab import checkpoint_files, evaluation, rundir, train

SHORT = {
    "adversarial": ["experiment=mnist1d_gan", "trainer.batch_size=200"],
    "reconstruction": ["experiment=digits_dae"],
    "masked": ["experiment=digits_mae"],
    "contrastive": ["experiment=mnist1d_contrastive", "trainer.batch_size=200"],
}


@pytest.mark.parametrize("shape", SHORT)
def test_eval_reproduces_the_test_metrics_of_every_shape(shape, make_cfg, tmp_path, capsys):
    run_dir = rundir.claim(tmp_path / "run")
    results = train.run(make_cfg(*SHORT[shape], "trainer.max_epochs=1"), run_dir, launch=None)
    assert evaluation.eval_run(run_dir, "best", "test") == 0
    record = json.loads((run_dir / "eval" / "test-best.json").read_text())
    assert record["metrics"] == pytest.approx(results["test"], rel=1e-9)


def test_a_resume_that_changes_the_generators_lr_applies_it(make_cfg, tmp_path):
    run_dir = rundir.claim(tmp_path / "run")
    train.run(make_cfg(*SHORT["adversarial"], "trainer.max_epochs=1"), run_dir, launch=None)
    changed = ["trainer.max_epochs=2", "optimizer_g.lr=5e-4"]
    code = train.resume(run_dir, changed, ["optimizer_g.lr"], argv=["trainlab", "resume"])
    assert code == 0
    saved = checkpoint_files.load(run_dir / "checkpoints" / "last.pt")
    assert [g["lr"] for g in saved["optimizer_g"]["param_groups"]] == [5e-4]
    assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == [1e-3]  # D's unchanged


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment", ["mnist1d_gan", "digits_dcgan", "digits_dae", "digits_mae", "mnist1d_contrastive"]
)
def test_each_experiment_trains_through_the_cli(experiment, tmp_path, data_dir):
    """The real command line, shrunk to two epochs (the full-length numbers are README's)."""
    done = run_cli(
        "train", f"experiment={experiment}", "trainer.max_epochs=2", "trainer.progress=none",
        f"paths.output_dir={tmp_path / 'outputs'}", f"paths.data_dir={data_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] and metrics["epochs"] == 2


def test_predict_refuses_a_run_of_another_shape_in_one_line(make_cfg, tmp_path, capsys):
    run_dir = rundir.claim(tmp_path / "run")
    train.run(make_cfg(*SHORT["reconstruction"], "trainer.max_steps=2"), run_dir, launch=None)
    table = tmp_path / "in.csv"
    table.write_text("a,b\n1,2\n")
    assert evaluation.predict(run_dir, table, None, "best") == 2
    assert "task=reconstruction: predict writes a supervised model's predictions" in (
        capsys.readouterr().err
    )


def test_the_preflight_leaves_a_contrastive_models_batch_norm_statistics_alone(make_cfg):
    """Both of its forward passes (samples, and two views of them) run in eval mode."""
    import torch
    from torch import nn

    from trainlab import distributed as dist
    from trainlab import parts as parts_module
    from trainlab.config import trainer_of
    from trainlab.data import build_data
    from trainlab.embedders import Embedder
    from trainlab.preflight import preflight

    cfg = make_cfg("experiment=mnist1d_contrastive")
    data = build_data(cfg.dataset, torch.device("cpu"), task="contrastive")
    built = parts_module.build_parts(cfg, trainer_of(cfg), data, torch.device("cpu"), dist.World())
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(40, 64), nn.BatchNorm1d(64))
    built.model = Embedder(encoder, [40], 64, 32, 16)
    before = {k: v.clone() for k, v in built.model.state_dict().items()}
    preflight(cfg, built)
    after = built.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert built.model.training


def test_a_run_folder_config_cannot_name_a_hostile_step(make_cfg, tmp_path, capsys):
    """config.yaml is read back by resume: a trainer.step edited into it to run code is
    refused like a `_target_`, in one line, before anything is built."""
    run_dir = rundir.claim(tmp_path / "run")
    train.run(make_cfg("model=mlp", "trainer.max_steps=2"), run_dir, launch=None)
    config_file = run_dir / "config.yaml"
    text = config_file.read_text()
    assert "  step: null\n" in text
    config_file.write_text(text.replace("  step: null\n", "  step: os.system\n"))
    assert train.resume(run_dir, ["trainer.max_steps=4"], [], argv=["trainlab", "resume"]) == 2
    assert "trainer.step=os.system: not an allowed target" in capsys.readouterr().err
    saved = checkpoint_files.load_latest(run_dir / "checkpoints")[1]
    assert saved["step"] == 2  # nothing trained, nothing written
