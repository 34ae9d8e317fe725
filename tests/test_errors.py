"""Bad input through the command line's entry point: each mistake exits with its code, names
the key in one line of stderr, shows no traceback, and leaves no output folder behind. The rows
call `cli.main` in-process (what `python -m trainlab` runs; a fresh interpreter per row would
cost 2 s each); the process boundary is tested by the HYDRA_FULL_ERROR test and test_cli."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg, run_cli
from trainlab import cli

CSV = ["dataset=csv", "model=mlp", "dataset.features=[f1,f2,f3,f4]"]

# (name, arguments, exit code, what stderr must say). {conf}, {data}, {tmp} are filled in.
CASES = [
    ("malformed YAML", ["train", "hydra.searchpath=[file://{conf}]", "experiment=broken"], 2,
     "broken.yaml: not valid YAML at line 4"),
    ("unknown option", ["train", "model=transformer"], 2,
     "model=transformer: no such option. Options: autoencoder, cnn, cnn1d"),
    ("option misspelt", ["train", "optimizer=adamm"], 2, "did you mean optimizer=adam?"),
    ("unknown key", ["train", "trainer.max_epoch=3"], 2,
     "trainer.max_epoch: unknown key; did you mean trainer.max_epochs=3?"),
    ("key added with +", ["train", "+trainer.foo=1"], 2, "trainer.foo: unknown key"),
    ("nested key added with +", ["train", "+trainer.tensorboard.grahp=1"], 2,
     "trainer.tensorboard.grahp: unknown key; did you mean trainer.tensorboard.graph?"),
    ("group misspelt", ["train", "schedular=cosine"], 2, "did you mean scheduler=cosine?"),
    ("model key misspelt", ["train", "model=mlp", "+model.hiden_sizes=[3]"], 2,
     "model.hiden_sizes: unknown key; did you mean model.hidden_sizes?"),
    ("wrong type", ["train", "trainer.batch_size=big"], 2,
     "trainer.batch_size=big: must be an integer"),
    ("unparsable override", ["train", "model=mlp", "model.hidden_sizes=[64"], 2,
     "model.hidden_sizes=[64: not a valid override"),
    ("no value", ["train", "trainer.monitor=null"], 2,
     "trainer.monitor=null: must have a value (default: val/acc)"),
    ("out of range", ["train", "dataset.val_fraction=1.5"], 2,
     "dataset.val_fraction=1.5: must be in (0, 1)"),
    ("smoothing out of range", ["train", "loss.label_smoothing=1.0"], 2,
     "loss.label_smoothing=1.0: must be in [0, 1)"),
    ("warmup longer than the run",
     ["train", "scheduler=lambda_warmup", "scheduler.warmup_steps=100000"], 2,
     "scheduler.warmup_steps=100000"),
    ("monitor the task lacks", ["train", "trainer.monitor=val/f1"], 2,
     "trainer.monitor=val/f1: dataset.task=classification reports val/loss, val/acc"),
    ("per-rank batch", ["train", "trainer.devices=2", "trainer.batch_size=99"], 2,
     "trainer.batch_size=99: it is the global batch"),
    ("unknown precision", ["train", "trainer.precision=fp8"], 2, "trainer.precision=fp8"),
    ("missing data path", ["train", *CSV, "dataset.path={tmp}/nowhere.csv"], 4,
     "dataset.path={tmp}/nowhere.csv: no such file"),
    ("empty data", ["train", *CSV, "dataset.path={tmp}/empty.csv"], 4,
     "dataset.path={tmp}/empty.csv: the table is empty"),
    ("class count", ["train", "model=mlp", "model.num_outputs=3"], 2,
     "model.num_outputs=3: the model gives outputs of shape [2, 3] but the dataset has 10 "
     "classes (dataset.num_classes=10)"),
    ("regression loss on classes", ["train", "loss=l1"], 2,
     "loss=l1 fits regression or reconstruction targets, but dataset.task=classification"),
    ("a class count the table disagrees with", ["train", *CSV, "dataset.num_classes=2"], 4,
     "dataset.num_classes=2: the data has 3 classes (setosa, versicolor, virginica); set "
     "dataset.num_classes=3, or null to read it from the data"),
    ("resume of a non-run folder", ["resume", "{tmp}"], 2, "no config.yaml here"),
    ("eval without checkpoints", ["eval", "{tmp}/unsaved"], 2, "unsaved: no checkpoints"),
    ("export of a non-run folder", ["export", "{tmp}"], 2, "no config.yaml here"),
    ("dotpath misspelt", ["train", "model=mlp", "model._target_=trainlab.models.MPL"], 2,
     "model._target_=trainlab.models.MPL: trainlab.models has no MPL; did you mean "
     "trainlab.models.MLP?"),
    ("unknown verb", ["fit"], 2, "unknown verb 'fit'"),
    ("two Hydra modes", ["train", "--cfg", "job", "--info", "all"], 2,
     "Only one of --run, --multirun, --cfg, --info"),
]  # fmt: skip


@pytest.fixture
def bad_inputs(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    conf = tmp_path / "myconf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "broken.yaml").write_text(
        "# @package _global_\ntrainer:\n  max_epochs: [1\n"
    )
    (tmp_path / "empty.csv").write_text("f1,f2,f3,f4,label\n")
    unsaved = tmp_path / "unsaved"  # a run that stopped before its first checkpoint
    unsaved.mkdir()
    OmegaConf.save(compose_cfg([f"paths.data_dir={data_dir}"]), unsaved / "config.yaml")
    return {"conf": str(conf), "data": str(data_dir), "tmp": str(tmp_path)}


@pytest.mark.parametrize(("name", "args", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_says_which_key_and_leaves_nothing(
    tmp_path, data_dir, bad_inputs, monkeypatch, capsys, name, args, code, message
):
    args = [a.format(**bad_inputs) for a in args]
    if args[0] == "train":
        args += [f"paths.data_dir={data_dir}", "trainer.max_epochs=1"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    returned = cli.main(args)  # an exception escaping here is the traceback a user would see
    stderr = capsys.readouterr().err
    assert returned == code, stderr
    assert message.format(**bad_inputs) in stderr, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [stderr.strip()]
    assert not (tmp_path / "outputs").exists(), "a rejected run left a folder"
    assert not (Path(bad_inputs["tmp"]) / "unsaved" / "eval").exists()


def test_a_module_that_is_not_importable_is_one_line_and_leaves_no_folder(
    tmp_path, data_dir, monkeypatch, capsys
):
    """The user's own package, allowed by TRAINLAB_TARGETS, but not importable from here (run
    from another folder, or without PYTHONPATH=.)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAINLAB_TARGETS", "mymodels")
    args = ["train", "model=mlp", "model._target_=mymodels.Net", f"paths.data_dir={data_dir}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: model._target_=mymodels.Net: there is no module mymodels here; run from your "
        "project folder (the one with conf/ and mymodels.py), set "
        "TRAINLAB_CONFIG_PATH=<project>/conf, or install its package"
    ]
    assert not (tmp_path / "outputs").exists()


def test_full_error_shows_the_traceback(tmp_path, data_dir):
    done = run_cli("train", "trainer.max_epoch=3", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "max_epoch" in done.stderr


# A typo in a sweep, in each of Hydra's sweep syntaxes: one line naming it, exit 2, nothing
# made; never a traceback from the explainer.
SWEEP_TYPOS = [
    ("comma list", ["optimizer=adamm,sgd"], "optimizer=adamm: no such option; did you mean "
     "optimizer=adam?"),
    ("choice", ["optimizer.lrr=choice(0.1,0.01)"],
     "optimizer.lrr: unknown key; did you mean optimizer.lr=choice(0.1,0.01)?"),
    ("choice of options", ["model=choice(mlp,cnnn)"], "model=cnnn: no such option; did you "
     "mean model=cnn?"),
    ("range", ["trainer.max_epocs=range(1,3)"],
     "trainer.max_epocs: unknown key; did you mean trainer.max_epochs=range(1,3)?"),
    ("interval", ["hydra/sweeper=trainlab_optuna", "optimizer.lrr=interval(1e-4,1e-1)"],
     "optimizer.lrr: unknown key; did you mean optimizer.lr=interval(1e-4,1e-1)?"),
    ("tag", ["hydra/sweeper=trainlab_optuna", "optimizer.lrr=tag(log,interval(1e-4,1e-1))"],
     "optimizer.lrr: unknown key; did you mean optimizer.lr=tag(log,interval(1e-4,1e-1))?"),
    ("glob", ["optimizer=glob(ad*)", "trainer.max_epoch=3"],
     "trainer.max_epoch: unknown key; did you mean trainer.max_epochs=3?"),
    ("glob matching nothing", ["optimizer=glob(zz*)"],
     "optimizer=glob(zz*): matches no option of optimizer; options: adadelta, adagrad"),
    ("a typo beside an interval", ["hydra/sweeper=trainlab_optuna",
     "optimizer.lr=interval(1e-4,1e-1)", "trainer.batch_sise=8"],
     "trainer.batch_sise: unknown key; did you mean trainer.batch_size=8?"),
    ("wrong type in a choice", ["trainer.batch_size=choice(8,big)"],
     "trainer.batch_size=choice(8,big): must be an integer, not 'big'"),
    ("floats for an integer", ["hydra/sweeper=trainlab_optuna",
     "trainer.max_epochs=interval(1,3)"], "trainer.max_epochs=interval(1,3): must be an "
     "integer; an interval of them: int(interval(1, 8))"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "args", "message"), SWEEP_TYPOS, ids=[c[0] for c in SWEEP_TYPOS])
def test_a_typo_in_any_sweep_syntax_is_one_line(
    tmp_path, data_dir, monkeypatch, capsys, name, args, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capsys.readouterr()
    paths = [f"paths.data_dir={data_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    returned = cli.main(["train", "-m", *args, *paths])
    stderr = capsys.readouterr().err
    assert returned == 2, stderr
    assert message in stderr, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [stderr.strip()]
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "outputs").exists()
