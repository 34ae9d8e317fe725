"""A user's project: `trainlab init`, config folders on top of trainlab's (./conf,
--config-dir, TRAINLAB_CONFIG_PATH), the project's own modules imported and trusted without
PYTHONPATH, `trainlab configs` and its --copy, and shell completion's query."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainlab import cli, completion, project, rundir, scaffold
from trainlab.config import CONF_DIR

PROJECT_MODULES = ("models", "spirals", "mymodels", "json")


@pytest.fixture
def clean_imports(monkeypatch):
    """A project's modules and sys.path entries do not outlive the test (each test's project
    is another folder with modules of the same names)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv(project.ENV, raising=False)
    yield
    for name in PROJECT_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def proj(tmp_path, monkeypatch, clean_imports) -> Path:
    """A project made by `trainlab init`, and the launch folder is it."""
    folder = tmp_path / "proj"
    assert cli.main(["init", str(folder)]) == 0
    monkeypatch.chdir(folder)
    return folder


def composed(capsys, *args: str) -> str:
    """`trainlab train ARGS --cfg job`: the composed config as text (nothing runs)."""
    capsys.readouterr()
    assert cli.main(["train", *args, "--cfg", "job"]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_init_writes_a_project_and_overwrites_nothing(tmp_path, capsys):
    folder = tmp_path / "p"
    assert cli.main(["init", str(folder)]) == 0
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert written == [
        ".gitignore", "README.md", "conf/dataset/spirals.yaml", "conf/experiment/example.yaml",
        "conf/model/my_model.yaml", "models.py", "spirals.py",
    ]  # fmt: skip
    assert "trainlab train experiment=example" in capsys.readouterr().out
    assert "models.MyNet" in (folder / "conf/model/my_model.yaml").read_text()
    # A second init, or one into a folder with any of its files, writes nothing at all.
    (folder / "models.py").write_text("# mine\n")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert cli.main(["init", str(folder)]) == 2
    assert "already has README.md" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    other = tmp_path / "q"
    other.mkdir()
    (other / "spirals.py").write_text("# mine\n")
    assert cli.main(["init", str(other)]) == 2
    assert sorted(p.name for p in other.iterdir()) == ["spirals.py"]


def test_init_that_cannot_write_keeps_nothing(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert cli.main(["init", str(a_file)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {a_file}: is a file")
    assert cli.main(["init", str(a_file / "proj")]) == 2
    assert "cannot write the project" in capsys.readouterr().err
    # The disk fills up at the fourth file: the three written are taken back.
    real, calls = rundir.write_atomic, []

    def filling(path, payload, **kwargs):
        calls.append(path)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(path, payload, **kwargs)

    monkeypatch.setattr(rundir, "write_atomic", filling)
    assert cli.main(["init", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert len(calls) == 4 and not [p for p in (tmp_path / "full").rglob("*") if p.is_file()]


def test_a_new_file_write_never_goes_over_a_file(tmp_path):
    """What init and --copy write through: a file that is there (or appeared after their
    check) is left as it is, and no temporary file stays."""
    there = tmp_path / "mine.yaml"
    there.write_text("mine\n")
    with pytest.raises(FileExistsError):
        rundir.write_atomic(there, b"theirs\n", replace=False)
    assert there.read_text() == "mine\n" and sorted(tmp_path.iterdir()) == [there]
    rundir.write_atomic(tmp_path / "new.yaml", b"new\n", replace=False)
    assert (tmp_path / "new.yaml").read_text() == "new\n"


def test_the_template_is_the_package_data_init_copies():
    """Every template file reaches the project (the dotfile renamed): nothing in
    project_template/ is left out, nothing else is written."""
    names = {p.as_posix() for p in scaffold.files()}
    on_disk = {
        p.relative_to(scaffold.TEMPLATE).as_posix()
        for p in scaffold.TEMPLATE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert names == {scaffold.RENAMED.get(n, n) for n in on_disk}


def test_a_project_trains_its_own_model_and_evals_from_elsewhere(proj, tmp_path, monkeypatch):
    args = ["train", "experiment=example", "trainer.max_epochs=1", "trainer.num_threads=1"]
    assert cli.main(args) == 0
    (run,) = (proj / "outputs" / "runs").iterdir()
    stored = (run / "config.yaml").read_text()
    assert "_target_: models.MyNet" in stored and "_target_: spirals.load" in stored
    assert sys.modules["models"].__file__ == str(proj / "models.py")
    # From another folder the project's code is not trusted until the user says where it is.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(proj)])
    assert cli.main(["eval", str(run)]) == 2
    monkeypatch.setenv(project.ENV, str(proj / "conf"))
    assert cli.main(["eval", str(run)]) == 0
    assert (run / "eval" / "test-best.json").is_file()
    assert not (elsewhere / "outputs").exists()


def test_config_folders_stack_in_front_of_trainlabs(proj, tmp_path, monkeypatch, capsys):
    """./conf, TRAINLAB_CONFIG_PATH and --config-dir each add options and replace trainlab's of
    the same name; the command line's folder wins, then the environment's, then ./conf."""

    def adam_lr(folder: Path, lr: float) -> None:
        (folder / "optimizer").mkdir(parents=True, exist_ok=True)
        text = (CONF_DIR / "optimizer" / "adam.yaml").read_text()
        (folder / "optimizer" / "adam.yaml").write_text(text.replace("\nlr: 0.01 ", f"\nlr: {lr} "))

    assert "\nlr: 0.01 " in (CONF_DIR / "optimizer" / "adam.yaml").read_text()
    adam_lr(proj / "conf", 0.5)
    assert "lr: 0.5\n" in composed(capsys, "optimizer=adam")
    assert "_target_: models.MyNet" in composed(capsys, "model=my_model")
    env_conf, flag_conf = tmp_path / "env_conf", tmp_path / "flag_conf"
    adam_lr(env_conf, 0.25)
    adam_lr(flag_conf, 0.125)
    monkeypatch.setenv(project.ENV, str(env_conf))
    assert "lr: 0.25\n" in composed(capsys, "optimizer=adam")
    assert "lr: 0.125\n" in composed(capsys, "--config-dir", str(flag_conf), "optimizer=adam")
    assert os.environ[project.ENV] == str(env_conf)  # the flag's folder was for that command
    # From an empty folder, --config-dir alone brings the project (its code included).
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.delenv(project.ENV)
    out = composed(capsys, f"--config-dir={proj / 'conf'}", "experiment=example")
    assert "_target_: models.MyNet" in out
    assert "lr: 0.5\n" in composed(capsys, f"--config-dir={proj / 'conf'}", "optimizer=adam")
    # The config check sees a project's options too: an unknown key in one is one line.
    (proj / "conf" / "model" / "bad.yaml").write_text("_target_: models.MyNet\nwidth: 3\n")
    assert cli.main(["train", "--config-dir", str(proj / "conf"), "model=bad"]) == 2
    assert not (empty / "outputs").exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--config-dir", "{tmp}/nowhere"], None, "--config-dir {tmp}/nowhere: {tmp}/nowhere is "
         "not a folder"),
        (["--config-dir"], None, "--config-dir: give the folder"),
        ([], "{tmp}/gone", "TRAINLAB_CONFIG_PATH={tmp}/gone: {tmp}/gone is not a folder"),
        (["-sc", "install=bash"], None, "-sc: Hydra's completion would answer for any command"),
    ],
)  # fmt: skip
def test_bad_config_folders_are_one_line(
    args, env, message, tmp_path, monkeypatch, capsys, clean_imports
):
    monkeypatch.chdir(tmp_path)
    if env:
        monkeypatch.setenv(project.ENV, env.format(tmp=tmp_path))
    assert cli.main(["train", *[a.format(tmp=tmp_path) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(tmp=tmp_path)), err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_project_modules_are_trusted_by_where_they_are_not_by_their_name(
    proj, tmp_path, monkeypatch, capsys
):
    # A project file named like an installed module does not make that module trusted: the
    # name resolves to the installed one, which the check refuses.
    (proj / "json.py").write_text("class Net:\n    pass\n")
    assert cli.main(["train", "experiment=example", "model._target_=json.JSONDecoder"]) == 2
    err = capsys.readouterr().err
    assert "json is imported from" in err and "rename json.py" in err
    # A run folder's config.yaml cannot bring code of its own: eval from a folder that is not
    # a project refuses a target that only the run folder holds.
    run = tmp_path / "handed_over"
    shutil.copytree(proj, run, ignore=shutil.ignore_patterns("outputs"))
    (run / "mymodels.py").write_text(
        f"open({str(tmp_path / 'pwned')!r}, 'w').close()\nclass Net:\n    pass\n"
    )
    (run / "config.yaml").write_text("model:\n  _target_: mymodels.Net\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", str(run)]) == 2
    assert "model._target_=mymodels.Net: not an allowed target" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("args", [["--help"], ["model=mlp"]])
def test_a_package_without_its_config_groups_says_so(args, tmp_path, monkeypatch, capsys):
    """An install that lost trainlab/conf/ (a broken wheel) is an error, --help included (it
    would list no groups and exit 0)."""
    monkeypatch.setattr(cli, "CONF_DIR", tmp_path / "conf")
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: trainlab's config groups are not at {tmp_path / 'conf'}; ")


def test_train_help_shows_the_projects_options(proj, capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "  model: autoencoder, cnn, cnn1d, " in out and "my_model*" in out
    assert "(default: cnn1d)" in out
    assert f"* from your config folder: {proj / 'conf'}" in out


# ---- trainlab configs ----


def test_configs_lists_groups_and_options_with_descriptions(proj, capsys):
    assert cli.main(["configs", "model"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model:\n")
    assert re.search(r"^  mlp +Multi-layer perceptron on the flattened input\.$", out, re.M)
    assert "(default)" in out.split("cnn1d", 1)[1].splitlines()[0]
    assert re.search(
        r"my_model +Your model: MyNet in models.py, in this project folder\.  \(yours\)", out
    )
    assert cli.main(["configs"]) == 0
    every = capsys.readouterr().out
    for group in ("dataset:", "optimizer:", "scheduler:", "hydra/launcher:", "experiment:"):
        assert f"\n{group}\n" in f"\n{every}"
    assert cli.main(["configs", "optimizer/sgd"]) == 0
    shown = capsys.readouterr().out
    assert (
        shown
        == f"# {CONF_DIR / 'optimizer' / 'sgd.yaml'}\n"
        + (CONF_DIR / "optimizer" / "sgd.yaml").read_text()
    )


def test_configs_copy_writes_the_yaml_into_the_project_and_never_over_a_file(proj, capsys):
    assert cli.main(["configs", "optimizer/sgd", "--copy"]) == 0
    copied = proj / "conf" / "optimizer" / "sgd.yaml"
    assert copied.read_bytes() == (CONF_DIR / "optimizer" / "sgd.yaml").read_bytes()
    assert capsys.readouterr().out.startswith(f"wrote {Path('conf/optimizer/sgd.yaml')};")
    copied.write_text(copied.read_text().replace("lr: 0.1", "lr: 0.7"))
    edited = copied.read_bytes()
    assert cli.main(["configs", "optimizer/sgd", "--copy"]) == 2
    assert "exists; edit it, or pass --force" in capsys.readouterr().err
    assert copied.read_bytes() == edited
    assert cli.main(["configs", "optimizer"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("sgd"))
    assert line.endswith("(yours, replaces trainlab's)")
    # --force puts trainlab's version back; the experiment group gets a folder of its own.
    assert cli.main(["configs", "optimizer/sgd", "--copy", "--force"]) == 0
    assert copied.read_bytes() == (CONF_DIR / "optimizer" / "sgd.yaml").read_bytes()
    assert cli.main(["configs", "hydra/launcher/slurm", "--copy", "--to", "elsewhere"]) == 0
    assert (proj / "elsewhere" / "hydra" / "launcher" / "slurm.yaml").is_file()
    assert not list(proj.rglob("*.tmp"))
    (proj / "a_file").write_text("x")
    assert cli.main(["configs", "model/mlp", "--copy", "--to", "a_file/conf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model/mlp: cannot write a_file/conf/model/mlp.yaml (")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("optimizer/sdg", "optimizer/sdg: no such config option; did you mean optimizer/sgd?"),
        ("optimiser/sgd", "optimiser/sgd: no such config option; groups: dataset, experiment"),
        ("../../etc/passwd", "../../etc/passwd: no such config option"),
        ("modle", "modle: no such config option; did you mean model"),
    ],
)
def test_configs_names_what_is_not_there(what, message, proj, capsys):
    assert cli.main(["configs", what, "--copy"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert sorted(p.name for p in (proj / "conf").iterdir()) == ["dataset", "experiment", "model"]


# ---- shell completion ----


def complete(capsys, line: str, cur: str | None = None) -> list[str]:
    capsys.readouterr()
    assert cli.main(["__complete", line, *([cur] if cur is not None else [])]) == 0
    return capsys.readouterr().out.splitlines()


def test_completion_query_answers_verbs_options_and_keys(proj, capsys):
    assert complete(capsys, "trainlab ") == [*cli.VERBS, "--help", "--version"]
    assert complete(capsys, "trainlab co") == ["configs", "completion"]
    assert complete(capsys, "trainlab train mo") == ["model=", "model."]  # an option, a key
    assert complete(capsys, "trainlab train model=m") == [
        "model=mae", "model=mlp", "model=multihead", "model=my_model",
    ]  # fmt: skip
    assert complete(capsys, "trainlab train -m optimizer=sgd,ad") == [
        "optimizer=sgd,adadelta", "optimizer=sgd,adagrad", "optimizer=sgd,adam",
        "optimizer=sgd,adamax", "optimizer=sgd,adamw",
    ]  # fmt: skip
    assert complete(capsys, "trainlab train trainer.max_") == [
        "trainer.max_epochs=", "trainer.max_steps=",
    ]  # fmt: skip
    # Keys come from the config the line picks: model=mlp's keys, not the default model's.
    assert complete(capsys, "trainlab train model=mlp model.hid") == ["model.hidden_sizes="]
    assert complete(capsys, "trainlab train model=my_model model.hid") == ["model.hidden="]
    assert "trainer." in complete(capsys, "trainlab train tr")
    assert complete(capsys, "trainlab train --conf") == ["--config-dir"]
    assert complete(capsys, "trainlab configs optimizer/ad")[:2] == [
        "optimizer/adadelta", "optimizer/adagrad",
    ]  # fmt: skip
    assert complete(capsys, "trainlab eval outp") == []  # run folders: the shell's files
    # bash splits words at '=': it replaces only what follows, so that is what is printed.
    assert complete(capsys, "trainlab train model=ml", "ml") == ["mlp"]
    assert complete(capsys, "trainlab train model=", "=")[:3] == ["=autoencoder", "=cnn", "=cnn1d"]


def test_completion_scripts_install_and_call_the_query(tmp_path, capsys):
    assert cli.main(["completion", "zsh"]) == 0
    assert "compdef _trainlab_complete trainlab" in capsys.readouterr().out
    assert cli.main(["completion", "fish"]) == 2
    assert 'eval "$(trainlab completion bash)"' in capsys.readouterr().err
    # The bash script itself, in bash, with trainlab on PATH as an installed one would be.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "trainlab").write_text(f'#!/bin/sh\nexec {sys.executable} -m trainlab "$@"\n')
    (bin_dir / "trainlab").chmod(0o755)
    script = completion.BASH + (
        'COMP_LINE="trainlab train optimizer=ad"; COMP_POINT=${#COMP_LINE}\n'
        "COMP_WORDS=(trainlab train optimizer = ad); COMP_CWORD=4\n"
        '_trainlab_complete 2>/dev/null; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.stdout.split() == ["adadelta", "adagrad", "adam", "adamax", "adamw"], done


def test_configs_and_completion_read_files_without_composing(proj, capsys):
    """A project's YAML that does not parse still lists (with no description) and completes:
    neither composes the config."""
    (proj / "conf" / "model" / "broken.yaml").write_text("_target_: [unclosed\n")
    assert cli.main(["configs", "model"]) == 0
    assert "\n  broken  " in capsys.readouterr().out
    assert complete(capsys, "trainlab train model=br") == ["model=broken"]
