"""The step contract (steps.py): a user's own step function, named by trainer.step, trains,
checkpoints the state it declares and resumes bitwise; what it may name is checked like any
`_target_`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import user_steps
from conftest import run_cli
from test_resume import assert_same_run, crash_then_resume
from trainlab import checkpoint_files, config, rundir, train
from trainlab.errors import ConfigError

SMALL = ["model=mlp", "model.dropout=0.3", "trainer.batch_size=200", "trainer.max_epochs=3",
         "trainer.checkpoint.every_n_steps=4", "trainer.log_every_n_steps=3"]  # fmt: skip


@pytest.fixture
def trusted(monkeypatch):
    monkeypatch.setenv("TRAINLAB_TARGETS", "user_steps")


def test_a_user_step_trains_checkpoints_its_state_and_resumes_bitwise(
    trusted, make_cfg, tmp_path, monkeypatch
):
    cfg = make_cfg(*SMALL, "trainer.step=user_steps.ema_step")
    straight = rundir.claim(tmp_path / "straight")
    train.run(cfg, straight, launch=None)
    saved = checkpoint_files.load(straight / "checkpoints" / "last.pt")
    # The average is there, by its declared name, and it is an average: neither the final
    # weights nor the initial ones.
    shadow, weights = saved["ema"]["shadow"], saved["model"]
    assert shadow.keys() == {k for k, v in weights.items() if v.is_floating_point()}
    assert not torch.equal(shadow["head.weight"], weights["head.weight"])

    # Interrupted two steps past a mid-epoch checkpoint (18 steps an epoch), resumed.
    run_dir = rundir.claim(tmp_path / "run")
    trust = lambda m: m.setenv("TRAINLAB_TARGETS", "user_steps")  # noqa: E731
    crash_then_resume(cfg, run_dir, monkeypatch, 18 + 6, then=trust)
    assert_same_run(straight, run_dir)  # every checkpoint key, "ema" included

    # Negative control: a resume that does not bring the average back differs.
    again = rundir.claim(tmp_path / "again")

    def forget_the_average(m):
        trust(m)
        m.setattr(user_steps.WeightAverage, "load_state_dict", lambda self, state: None)

    crash_then_resume(cfg, again, monkeypatch, 18 + 6, then=forget_the_average)
    with pytest.raises(AssertionError, match="ema"):
        assert_same_run(straight, again)


def test_a_plain_step_function_is_the_supervised_step(trusted, make_cfg, tmp_path):
    runs = {}
    for name, extra in (("default", []), ("user", ["trainer.step=user_steps.plain_step"])):
        train.run(make_cfg(*SMALL[:3], *extra), rundir.claim(tmp_path / name), launch=None)
        runs[name] = checkpoint_files.load(tmp_path / name / "checkpoints" / "last.pt")["model"]
    for key, value in runs["default"].items():
        assert torch.equal(value, runs["user"][key]), key


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("os.system", "trainer.step=os.system: not an allowed target"),
        ("trainlab.checkpoint_files.save_bytes", "trainer.step=trainlab.checkpoint_files.save_b"),
        ("user_steps.WeightAverage", "trainer.step=user_steps.WeightAverage: names a type, not "
         "a step function"),
        ("user_steps.no_such_step", "trainer.step=user_steps.no_such_step: "),
    ],
)  # fmt: skip
def test_what_trainer_step_names_is_checked_at_config_check(trusted, make_cfg, step, message):
    with pytest.raises(ConfigError) as info:
        config.check(make_cfg(f"trainer.step={step}"))
    assert message in str(info.value)


def test_an_untrusted_module_is_refused_with_the_way_to_trust_it(make_cfg, monkeypatch):
    monkeypatch.delenv("TRAINLAB_TARGETS", raising=False)
    with pytest.raises(ConfigError) as info:
        config.check(make_cfg("trainer.step=user_steps.ema_step"))
    assert "trainer.step=user_steps.ema_step: not an allowed target" in str(info.value)
    assert "TRAINLAB_TARGETS" in str(info.value)


def test_extra_state_may_not_take_a_checkpoint_name(trusted, make_cfg, tmp_path):
    run_dir = rundir.claim(tmp_path / "run")
    with pytest.raises(ConfigError, match="its extra state may not be named optimizer"):
        train.run(make_cfg("trainer.step=user_steps.clashing_step"), run_dir, launch=None)
    assert not run_dir.exists()


def test_a_project_step_runs_from_the_installed_cli(tmp_path):
    """A project folder's own module is trusted (project.py): `trainlab train
    trainer.step=mysteps.ema_step` typed there runs it, with nothing else to configure."""
    project = tmp_path / "proj"
    (project / "conf").mkdir(parents=True)
    (project / "mysteps.py").write_text(Path(user_steps.__file__).read_text())
    result = run_cli(
        "train", "trainer.step=mysteps.ema_step", "trainer.max_epochs=1", "model=mlp",
        "trainer.progress=none", f"paths.data_dir={tmp_path / 'data'}", cwd=project,
        env={"TRAINLAB_TARGETS": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = (project / "outputs" / "runs").iterdir()
    assert "ema" in checkpoint_files.load(run / "checkpoints" / "last.pt")
    assert "step: mysteps.ema_step" in (run / "config.yaml").read_text()
