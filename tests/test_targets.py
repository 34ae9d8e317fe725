"""`_target_` attacks: each payload would create a marker file if it ran (the table checks that
the payloads are real by running three of them unguarded). Every path that reads a config
refuses them: `trainlab train` with a shared YAML file (model and Hydra's own callbacks and
logging), and a tampered run folder read by eval, resume, predict, export, trainer.resume=auto
and export.load_model. Refused means exit 2, a message that names the key, and no marker."""

from __future__ import annotations

import contextlib
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from trainlab import cli, config, export, lock, rundir, targets, train
from trainlab.errors import ConfigError


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def plant(tmp: Path) -> dict[str, str]:
    """Files the payloads use; returns the names the node templates fill in."""
    marker = tmp / "MARKER"
    (tmp / "evil.pkl").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    np.save(tmp / "evil.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    hub = tmp / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(f"def evil():\n    open({str(marker)!r}, 'w').close()\n")
    (tmp / "payload").mkdir()
    (tmp / "payload" / "MARKER").write_text("x")
    with tarfile.open(tmp / "evil.tar", "w") as tar:
        tar.add(tmp / "payload" / "MARKER", arcname="MARKER")
    shutil.rmtree(tmp / "payload")
    return {"marker": str(marker), "tmp": str(tmp)}


# A model node per attack: (name, node, the key the refusal must name).
MODEL_ATTACKS = [
    ("attribute hop through a trainlab module to torch.load",
     {"_target_": "trainlab.checkpoint.torch.load", "f": "{tmp}/evil.pkl", "weights_only": False},
     "model._target_=trainlab.checkpoint.torch.load"),
    ("attribute hop through a torch module to torch.hub.load",
     {"_target_": "torch.nn.modules.module.torch.hub.load", "repo_or_dir": "{tmp}/hub",
      "model": "evil", "source": "local", "trust_repo": True},
     "model._target_=torch.nn.modules.module.torch.hub.load"),
    ("torch.hub.load",
     {"_target_": "torch.hub.load", "repo_or_dir": "{tmp}/hub", "model": "evil",
      "source": "local", "trust_repo": True}, "model._target_=torch.hub.load"),
    ("torch.load with weights_only false",
     {"_target_": "torch.load", "f": "{tmp}/evil.pkl", "weights_only": False},
     "model._target_=torch.load"),
    ("os.system through a trainlab module",
     {"_target_": "trainlab.rundir.os.system", "command": "touch {marker}"},
     "model._target_=trainlab.rundir.os.system"),
    ("subprocess through a trainlab module",
     {"_target_": "trainlab.rundir.subprocess.run", "args": ["touch", "{marker}"]},
     "model._target_=trainlab.rundir.subprocess.run"),
    ("numpy's pickle loader through a trainlab module",
     {"_target_": "trainlab.data.np.load", "file": "{tmp}/evil.npy", "allow_pickle": True},
     "model._target_=trainlab.data.np.load"),
    ("a loader inside an allowed package",
     {"_target_": "torchvision.datasets.utils.extract_archive", "from_path": "{tmp}/evil.tar",
      "to_path": "{tmp}"}, "model._target_=torchvision.datasets.utils.extract_archive"),
    ("builtins.exec",
     {"_target_": "builtins.exec", "_args_": ["open('{marker}', 'w').close()"]},
     "model._target_=builtins.exec"),
    ("nested in _args_",
     {"_target_": "torch.nn.Sequential",
      "_args_": [{"_target_": "trainlab.datasets.torch.load", "f": "{tmp}/evil.pkl",
                  "weights_only": False}]},
     "model._args_[0]._target_=trainlab.datasets.torch.load"),
    ("a dunder hop out of an allowed class",
     {"_target_": "trainlab.models.MLP.__init__.__globals__.get", "_args_": ["x"]},
     "model._target_=trainlab.models.MLP.__init__.__globals__.get"),
]  # fmt: skip
# Shared experiment files that set Hydra's own nodes, which Hydra acts on before any callback.
HYDRA_ATTACKS = [
    ("the hydra.callbacks subtree",
     {"hydra": {"callbacks": {"evil": {"_target_": "trainlab.checkpoint.torch.load",
                                       "f": "{tmp}/evil.pkl", "weights_only": False}}}},
     "hydra.callbacks.evil._target_=trainlab.checkpoint.torch.load"),
    ("a logging factory in hydra.hydra_logging",
     {"hydra": {"hydra_logging": {"version": 1, "root": {"handlers": ["evil"]}, "handlers": {
         "evil": {"()": "trainlab.checkpoint.torch.load", "f": "{tmp}/evil.pkl",
                  "weights_only": False}}}}},
     "hydra.hydra_logging.handlers.evil.()=trainlab.checkpoint.torch.load"),
]  # fmt: skip


def fill(node, names: dict[str, str]):
    if isinstance(node, dict):
        return {k: fill(v, names) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, names) for v in node]
    return node.format(**names) if isinstance(node, str) else node


# Rows whose payload runs under the installed Hydra if trainlab's check is taken away (Hydra
# 1.3.8 blocks os.system, subprocess, exec and dunder walks itself; older 1.3 releases do not,
# and those rows stay in the table for them).
REAL = ["attribute hop through a trainlab module to torch.load",
        "attribute hop through a torch module to torch.hub.load", "torch.hub.load",
        "torch.load with weights_only false", "numpy's pickle loader through a trainlab module",
        "a loader inside an allowed package", "nested in _args_", "the hydra.callbacks subtree",
        "a logging factory in hydra.hydra_logging"]  # fmt: skip


@pytest.mark.parametrize("name", REAL)
def test_the_payloads_are_real(name, tmp_path):
    """Built the way Hydra builds them, without trainlab's check, these create the marker: the
    table below tests something."""
    from hydra._internal.logging_config import configure_logging

    names = plant(tmp_path)
    node = fill(next(n for row, n, _ in MODEL_ATTACKS + HYDRA_ATTACKS if row == name), names)
    with contextlib.suppress(Exception):  # what it returns is no model; the damage is done
        if "hydra" not in node:
            instantiate(OmegaConf.create(node))
        elif "callbacks" in node["hydra"]:
            instantiate(OmegaConf.create(node["hydra"]["callbacks"]["evil"]))
        else:
            configure_logging(node["hydra"]["hydra_logging"])
    assert Path(names["marker"]).exists()


def shared_yaml(tmp_path: Path, node: dict, group: str) -> list[str]:
    """A config folder someone shared, selected on the command line."""
    conf = tmp_path / "shared"
    (conf / group).mkdir(parents=True)
    text = yaml.safe_dump(node)
    if group == "experiment":
        text = "# @package _global_\n" + text
    (conf / group / "evil.yaml").write_text(text)
    return [f"hydra.searchpath=[file://{conf}]", f"{group}=evil"]


@pytest.mark.parametrize("name,node,key", MODEL_ATTACKS + HYDRA_ATTACKS, ids=lambda v: str(v)[:40])
def test_train_refuses_a_shared_config_that_would_run_code(
    name, node, key, tmp_path, data_dir, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    names = plant(tmp_path)
    group = "experiment" if "hydra" in node else "model"
    args = ["train", f"paths.data_dir={data_dir}", "trainer.max_epochs=1",
            *shared_yaml(tmp_path, fill(node, names), group)]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {key}: not an allowed target" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not Path(names["marker"]).exists()
    assert not (tmp_path / "outputs").exists()  # refused before any folder


@pytest.fixture(scope="module")
def trained_csv_run(tmp_path_factory, data_dir):
    """One finished run (CSV data, so predict applies too); each test tampers a copy."""
    from conftest import compose_cfg

    root = tmp_path_factory.mktemp("trained")
    cfg = compose_cfg([
        f"paths.data_dir={data_dir}", f"paths.output_dir={root}", "trainer.max_epochs=1",
        "trainer.num_threads=1", "dataset=csv", "model=mlp", "dataset.features=[f1,f2,f3,f4]",
        f"dataset.path={data_dir / 'table.csv'}",
    ])  # fmt: skip
    run_dir = rundir.claim(root / "run")
    train.run(cfg, run_dir, launch=None)
    assert export.export(run_dir, "safetensors", "best", None) == 0
    return run_dir


def tampered(run_dir: Path, tmp_path: Path, node: dict, file: str = "config.yaml") -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    stored = yaml.safe_load((copy / file).read_text())
    stored["model"] = node
    (copy / file).write_text(yaml.safe_dump(stored))
    return copy


LOCK = lock.LOCK_FILE
VERBS = {
    "eval": lambda run, tmp: cli.main(["eval", str(run)]),
    "resume": lambda run, tmp: cli.main(["resume", str(run), "trainer.max_epochs=2"]),
    "predict": lambda run, tmp: cli.main(["predict", str(run), "--input", str(tmp / "table.csv")]),
    "export": lambda run, tmp: cli.main(["export", str(run), "--format", "torchscript"]),
    "trainer.resume=auto": lambda run, tmp: cli.main(
        [
            "train",
            f"hydra.run.dir={run}",
            "trainer.resume=auto",
            "trainer.max_epochs=2",
            "dataset=csv",
            "model=mlp",
            "dataset.features=[f1,f2,f3,f4]",
            f"dataset.path={tmp / 'table.csv'}",
            f"paths.data_dir={tmp}",
        ]
    ),
}


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("case", [0, 1, 9], ids=lambda i: MODEL_ATTACKS[i][0][:30])
def test_a_tampered_run_folder_is_refused_by_every_verb(
    verb, case, trained_csv_run, data_dir, tmp_path, capsys
):
    names = plant(tmp_path)
    _, node, key = MODEL_ATTACKS[case]
    run = tampered(trained_csv_run, tmp_path, fill(node, names))
    shutil.copy(data_dir / "table.csv", tmp_path / "table.csv")

    def files() -> dict[Path, bytes]:  # all but the lock file, whose text names its holder
        return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK}

    before = files()
    assert VERBS[verb](run, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{key}: not an allowed target" in err, err
    assert not Path(names["marker"]).exists()
    assert files() == before


def test_export_load_model_refuses_a_tampered_export(trained_csv_run, tmp_path):
    names = plant(tmp_path)
    _, node, key = MODEL_ATTACKS[0]
    run = tampered(trained_csv_run, tmp_path, fill(node, names), "export/config.yaml")
    with pytest.raises(ConfigError, match=rf"^{key}: not an allowed target"):
        export.load_model(run / "export" / "config.yaml", run / "export" / "model.safetensors")
    assert not Path(names["marker"]).exists()
    # the untampered export still loads
    export.load_model(
        trained_csv_run / "export" / "config.yaml",
        trained_csv_run / "export" / "model.safetensors",
    )


def test_a_hydra_key_smuggled_into_a_run_config_is_refused(trained_csv_run, tmp_path, capsys):
    names = plant(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(trained_csv_run, copy)
    stored = yaml.safe_load((copy / "config.yaml").read_text())
    stored["hydra"] = fill(HYDRA_ATTACKS[0][1]["hydra"], names)
    (copy / "config.yaml").write_text(yaml.safe_dump(stored))
    assert cli.main(["eval", str(copy)]) == 2
    assert "hydra.callbacks.evil._target_=trainlab.checkpoint.torch.load" in capsys.readouterr().err
    assert not Path(names["marker"]).exists()


@pytest.mark.parametrize(
    "target",
    ["torch.nn.CrossEntropyLoss", "torch.optim.lr_scheduler.StepLR", "trainlab.models.MLP",
     "torchvision.models.resnet18", "torchvision.transforms.RandomCrop",
     "trainlab.datasets.csv_table", "torch.nn.functional.relu"],
)  # fmt: skip
def test_the_building_blocks_stay_allowed(target):
    assert callable(targets.check_one(target, "model._target_"))


def test_a_users_own_package_is_allowed_through_the_environment_only(
    tmp_path, make_cfg, monkeypatch
):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text(
        "import os\nimport torch\n\nclass Net(torch.nn.Linear):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = make_cfg("model._target_=mypkg.Net")
    with pytest.raises(ConfigError, match=r"model._target_=mypkg.Net: not an allowed target"):
        config.check(cfg)
    monkeypatch.setenv("TRAINLAB_TARGETS", "mypkg")
    config.check(cfg)
    # Naming a package does not open what it imported, nor the refused modules themselves.
    for target in ("mypkg.os.system", "mypkg.torch.load"):
        with pytest.raises(ConfigError, match="not a submodule"):
            targets.check_one(target, "model._target_")
    monkeypatch.setenv("TRAINLAB_TARGETS", "mypkg,os")
    with pytest.raises(ConfigError, match=r"model._target_=os.system: not an allowed target"):
        targets.check_one("os.system", "model._target_")


@pytest.mark.parametrize("flag", ["-cn other", "--experimental-rerun {tmp}/c.pickle"])
def test_hydra_flags_that_read_configs_the_check_cannot_see_are_refused(
    flag, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    names = plant(tmp_path)
    shutil.copy(tmp_path / "evil.pkl", tmp_path / "c.pickle")  # a "config" that is a payload
    args = flag.format(tmp=tmp_path).split()
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {args[0].split('=')[0]}: trainlab train reads trainlab's conf/")
    assert not Path(names["marker"]).exists()


@pytest.mark.parametrize("attack", [MODEL_ATTACKS[0], HYDRA_ATTACKS[0]], ids=["model", "hydra"])
def test_a_config_folder_given_with_config_dir_is_checked_like_any_other(
    attack, tmp_path, data_dir, capsys, monkeypatch
):
    """--config-dir is trainlab's own flag (project.py): the folder is on the search path the
    pre-check composes with, so what it holds is refused before Hydra builds anything."""
    monkeypatch.chdir(tmp_path)
    names = plant(tmp_path)
    _, node, key = attack
    group = "experiment" if "hydra" in node else "model"
    searchpath, choice = shared_yaml(tmp_path, fill(node, names), group)
    conf = searchpath.removeprefix("hydra.searchpath=[file://").removesuffix("]")
    args = ["train", f"paths.data_dir={data_dir}", "--config-dir", conf, choice]
    assert cli.main(args) == 2
    assert f"error: {key}: not an allowed target" in capsys.readouterr().err
    assert not Path(names["marker"]).exists()
    assert not (tmp_path / "outputs").exists()


SWEEPS = [["seed=0,1"], ["hparams_search=optuna", "optimizer.lr=interval(1e-4,1e-1)"]]


@pytest.mark.parametrize("sweep", SWEEPS, ids=["grid", "optuna"])
def test_a_sweep_is_checked_before_hydra_builds_its_callbacks(
    sweep, tmp_path, data_dir, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    names = plant(tmp_path)
    _, node, key = HYDRA_ATTACKS[0]
    args = ["train", "-m", f"paths.data_dir={data_dir}", "trainer.max_epochs=1", *sweep,
            *shared_yaml(tmp_path, fill(node, names), "experiment")]  # fmt: skip
    assert cli.main(args) == 2
    assert f"error: {key}: not an allowed target" in capsys.readouterr().err
    assert not Path(names["marker"]).exists()
    assert not (tmp_path / "outputs").exists()
