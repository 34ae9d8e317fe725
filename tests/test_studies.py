"""Optuna studies: a continued study proposes new points, a trial a dead worker left running
is resumed once, the shipped spaces fit their models, pruned and diverged trials are rows, and
several workers share one study (journal file, PostgreSQL) without a trial run twice."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import TINY
from test_sweep import multirun
from trainlab import cli

pytestmark = pytest.mark.slow

# A continuous space: two proposals are equal only if the sampler repeats itself.
SPACE = [
    "hydra/sweeper=trainlab_optuna", "model=mlp", "model.hidden_sizes=[16]",
    "optimizer.lr=tag(log, interval(1e-3, 1e-1))", "optimizer.weight_decay=interval(0.0, 1e-3)",
]  # fmt: skip


def sweep_in_process(tmp_path: Path, data_dir: Path, root: Path, *args: str) -> int:
    paths = [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.data_dir={data_dir}"]
    return cli.main(["train", "-m", *paths, *TINY, f"hydra.sweep.dir={root}", *args])


def study_at(root: Path, storage: str | None = None):
    import optuna

    return optuna.load_study(
        study_name="trainlab", storage=storage or f"sqlite:///{root}/optuna.db"
    )


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".trainlab.lock"
    }


def trial_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name[0].isdigit()),
                  key=lambda p: int(p.name.split("_")[0]))  # fmt: skip


def test_a_continued_study_proposes_new_points_and_leaves_its_trials_alone(
    tmp_path, data_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "study"
    assert sweep_in_process(tmp_path, data_dir, root, *SPACE, "hydra.sweeper.n_trials=3") == 0
    first = {p.name: snapshot(p) for p in trial_folders(root)}
    assert len(first) == 3
    assert sweep_in_process(tmp_path, data_dir, root, *SPACE, "hydra.sweeper.n_trials=6") == 0
    study = study_at(root)
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert len(set(params)) == 6, params  # no trial replays an earlier one
    folders = trial_folders(root)
    assert [p.name.split("_")[0] for p in folders] == [str(i) for i in range(6)]
    for name, files in first.items():  # the first three trials were not touched
        assert snapshot(root / name) == files
    # Seeded by trial number: the same 6 trials as one uninterrupted study of 6.
    straight = tmp_path / "straight"
    assert sweep_in_process(tmp_path, data_dir, straight, *SPACE, "hydra.sweeper.n_trials=6") == 0
    assert [t.params for t in study_at(straight).trials] == [t.params for t in study.trials]
    assert len((root / "summary.csv").read_text().splitlines()) == 7


def test_a_trial_left_running_by_a_dead_worker_is_resumed_once_then_failed(
    tmp_path, data_dir, monkeypatch
):
    import optuna

    from trainlab import studies

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "study"
    root.mkdir()
    # A study whose workers died: trial 0 was resumed once already (attempts 2), trial 1 died
    # before it had its parameters. Neither claim is held: their workers are gone.
    study = optuna.create_study(
        study_name="trainlab", storage=f"sqlite:///{root}/optuna.db", direction="maximize"
    )
    study.set_user_attr("sweep_dir", str(root))
    dist = optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    killed_twice = study.ask({"optimizer.lr": dist})
    study._storage.set_trial_system_attr(killed_twice._trial_id, studies.ATTEMPTS, 2)
    study.ask()  # no parameters
    space = ["hydra/sweeper=trainlab_optuna", "model=mlp", "model.hidden_sizes=[16]",
             "optimizer.lr=tag(log, interval(1e-3, 1e-1))"]  # fmt: skip
    code = sweep_in_process(tmp_path, data_dir, root, *space, "hydra.sweeper.n_trials=3")
    assert code == 0
    states = [t.state.name for t in study_at(root).trials]
    assert states == ["FAIL", "FAIL", "COMPLETE"]
    assert [p.name.split("_")[0] for p in trial_folders(root)] == ["2"]  # neither ran again


def test_the_shipped_spaces_fit_their_models_and_a_missing_key_is_refused_first(
    tmp_path, data_dir, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    short = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer.max_epochs=1"]
    own = {"mlp": {"model.hidden_sizes", "model.dropout"}, "cnn1d": {"model.channels"}}
    for model, monitor in (("mlp", "val/acc"), ("cnn1d", "val/loss")):
        root = tmp_path / model
        args = [*short, f"model={model}", f"trainer.monitor={monitor}"]
        assert sweep_in_process(tmp_path, data_dir, root, *args) == 0
        study = study_at(root)
        assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
        assert (
            set(study.trials[0].params) == {"optimizer.lr", "optimizer.weight_decay"} | own[model]
        )
        # The direction follows the monitor; Optuna is told each trial's best value of it.
        assert study.direction.name == ("MAXIMIZE" if monitor == "val/acc" else "MINIMIZE")
        best = [json.loads((j / "metrics.json").read_text())["best"][monitor]
                for j in trial_folders(root)]  # fmt: skip
        assert [t.value for t in study.trials] == best
    capsys.readouterr()
    # A key the model does not have: one line, exit 2, before any trial (no study, no folder).
    root = tmp_path / "refused"
    space = tmp_path / "conf" / "hparams_search"
    space.mkdir(parents=True)
    (space / "widths.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: trainlab_optuna\n"
        "hydra:\n  sweeper:\n    params:\n      model.channels: choice(16, 32)\n"
    )
    bad = ["--config-dir", str(space.parent), "hparams_search=widths", "model=mlp"]
    assert sweep_in_process(tmp_path, data_dir, root, *bad, "hydra.sweeper.n_trials=2") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error: hydra.sweeper.params: model.channels is not a key of model=mlp")
    assert "hidden_sizes" in err
    assert not (root / "optuna.db").exists() and not trial_folders(root)
    # A searched model group: the space's keys are checked for each of its options.
    searched = [*bad[:3], "model=choice(cnn1d,mlp)", "hydra.sweeper.n_trials=2"]
    assert sweep_in_process(tmp_path, data_dir, tmp_path / "both", *searched) == 2
    assert "model.channels is not a key of model=mlp" in capsys.readouterr().err
    # A key that exists, searched with values its type refuses: said before any trial too.
    (space / "floats.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: trainlab_optuna\n"
        "hydra:\n  sweeper:\n    params:\n      trainer.max_epochs: interval(1, 3)\n"
    )
    floats = [*bad[:2], "hparams_search=floats", "hydra.sweeper.n_trials=2"]
    assert sweep_in_process(tmp_path, data_dir, tmp_path / "floats", *floats) == 2
    err = capsys.readouterr().err
    assert "trainer.max_epochs=interval(1, 3): a trial's value 1.0 does not fit" in err
    assert "int(interval(low, high))" in err and not (tmp_path / "floats").exists()


def test_pruned_and_diverged_trials_are_rows_with_their_status(
    tmp_path, data_dir, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "study"
    base = ["hydra/sweeper=trainlab_optuna", "model=mlp", "model.hidden_sizes=[32]",
            "trainer.max_epochs=3", "hydra/sweeper/pruner=median",
            "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=0",
            "optimizer=sgd"]  # fmt: skip
    # Two good trials, then one that learns nothing (pruned after its first validation), then
    # one that diverges.
    assert sweep_in_process(tmp_path, data_dir, root, *base, "optimizer.lr=interval(0.05, 0.1)",
                            "hydra.sweeper.n_trials=2") == 0  # fmt: skip
    assert sweep_in_process(tmp_path, data_dir, root, *base, "optimizer.lr=interval(1e-9, 2e-9)",
                            "hydra.sweeper.n_trials=3") == 0  # pruned is no failure  # fmt: skip
    code = sweep_in_process(tmp_path, data_dir, root, *base, "optimizer.lr=interval(1e6, 2e6)",
                            "hydra.sweeper.n_trials=4")  # fmt: skip
    assert code == 1
    assert [t.state.name for t in study_at(root).trials] == [
        "COMPLETE", "COMPLETE", "PRUNED", "FAIL",
    ]  # fmt: skip
    pruned, diverged = trial_folders(root)[2:]
    status = json.loads((pruned / "status.json").read_text())
    assert status["status"] == "pruned" and status["reason"].startswith("MedianPruner: val/acc")
    assert "at epoch 1" in status["reason"]
    manifest = json.loads((pruned / "checkpoints" / "manifest.json").read_text())
    assert manifest["files"][manifest["last"]]["epoch"] == 1  # it keeps its checkpoint
    assert not (pruned / "metrics.json").exists()
    with (root / "summary.csv").open(newline="") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert rows[pruned.name]["status"].startswith("pruned: MedianPruner: val/acc")
    assert rows[diverged.name]["status"].startswith("diverged: train/loss is nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))  # Debian's layout
    return str(versions[-1]) if versions else None


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of the test's own (initdb, pg_ctl), on a free port; skipped where
    the machine has none (Debian: apt install postgresql)."""
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server on this machine (pg_ctl); apt install postgresql")
    import psycopg2

    # Not under pytest's tmp folder: a server run as another user could not reach it.
    base = Path(tempfile.mkdtemp(prefix="trainlab-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    run(initdb, "-D", str(base / "data"), "-U", "trainlab", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {base}"
    run(pg_ctl, "-D", str(base / "data"), "-o", options, "-l", str(base / "log"), "-w", "start")
    try:
        db = psycopg2.connect(host="127.0.0.1", port=port, user="trainlab", dbname="postgres")
        db.autocommit = True
        db.cursor().execute("CREATE DATABASE optuna")
        db.close()
        yield f"postgresql+psycopg2://trainlab@127.0.0.1:{port}/optuna"
    finally:
        run(pg_ctl, "-D", str(base / "data"), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_two_workers_share_one_study_and_split_its_trials(tmp_path, data_dir, storage, request):
    root = tmp_path / "study"
    journal = root / "optuna.log"
    url = f"journal:{journal}" if storage == "journal" else request.getfixturevalue("postgres_url")
    args = [*SPACE, "trainer.max_epochs=3", "hydra.sweeper.n_trials=6",
            f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={root}"]  # fmt: skip
    workers = [multirun(tmp_path, data_dir, *args, wait=False) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]
    where = url if storage == "postgresql" else None
    if storage == "journal":
        import optuna

        backend = optuna.storages.journal.JournalFileBackend(str(journal))
        where = optuna.storages.JournalStorage(backend)
    trials = study_at(root, where).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6  # n_trials is the study's total
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
    folders = trial_folders(root)
    assert [p.name.split("_")[0] for p in folders] == [str(i) for i in range(6)]
    pids = {json.loads((p / "run.json").read_text())["attempts"][0]["pid"] for p in folders}
    assert len(pids) == 2, "both workers ran trials"
    assert len((root / "summary.csv").read_text().splitlines()) == 7
    # A worker pointed at the study from another sweep folder is refused, touching nothing.
    other = multirun(tmp_path, data_dir, *args[:-1], f"hydra.sweep.dir={tmp_path / 'other'}")
    assert other.returncode == 2 and "belongs to the sweep folder" in other.stderr, other.stderr
    assert other.stderr.strip().count("\n") == 0, other.stderr
    if storage == "postgresql":  # (a journal file is made where it is named)
        assert not (tmp_path / "other").exists()


def test_workers_opening_an_empty_database_together_all_get_the_study(postgres_url, tmp_path):
    # Each creates Optuna's tables if there are none: all but one lose that race, and retry.
    code = (
        "import sys; from pathlib import Path; from trainlab import studies; "
        "studies.storage(sys.argv[1], Path('.')).get_all_studies()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, postgres_url],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
