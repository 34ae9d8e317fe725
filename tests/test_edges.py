"""Trust at the edges of a run: one owner per run folder (two processes at once), trainer.resume=
auto only ever continues a trainlab run, records survive a full disk, every signal in every
phase ends in interrupted(<signal>) and a resumable run, results say what was really tested,
and names cannot leave outputs/."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import files
from conftest import run_cli
from trainlab import checkpoint_files, cli, lock, loop, results, rundir, sweep, train
from trainlab.errors import DataError, RecordWriteError

RUN = ["model=mlp", "model.dropout=0.3", "trainer.num_threads=1", "trainer.log_every_n_steps=7"]


def straight(make_cfg, run_dir: Path, *overrides: str) -> Path:
    """The uninterrupted run, in this process."""
    train.run(make_cfg(*RUN, *overrides), rundir.claim(run_dir), launch=None)
    return run_dir


def assert_same_weights(a: Path, b: Path) -> None:
    x = checkpoint_files.load(a / "checkpoints" / "last.pt")["model"]
    y = checkpoint_files.load(b / "checkpoints" / "last.pt")["model"]
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), key
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["test"] == mb["test"] and ma["best"]["step"] == mb["best"]["step"]


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (but the lock's text) by its sha256: what "untouched" means."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != lock.LOCK_FILE
    }


def cli_args(data_dir: Path, *overrides: str) -> list[str]:
    return [f"paths.data_dir={data_dir}", *RUN, *overrides]


def popen(*args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        [sys.executable, "-m", "trainlab", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


# ---- one owner per run folder ----


def test_the_lock_refuses_a_second_owner_and_dies_with_its_holder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from trainlab import "
         f"lock; lock.own(Path({str(run_dir)!r}), ['holder']); print('held', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        assert lock.in_use(run_dir)
        with pytest.raises(lock.FolderInUse, match=rf"in use by pid {holder.pid} on .* \(holder\)"):
            lock.own(run_dir)
    finally:
        holder.kill()  # kill -9: no clean-up runs, the kernel drops the lock
        holder.wait()
    assert not lock.in_use(run_dir)
    lock.own(run_dir)  # a dead holder never blocks
    assert lock.in_use(run_dir)
    lock.disown(run_dir)


@pytest.mark.slow
def test_two_resumes_of_one_run_at_once(tmp_path, data_dir, make_cfg):
    """One is refused naming the holder and touches nothing; the other ends bitwise equal to the
    run that was never stopped, with every TensorBoard step once."""
    length = ["trainer.max_epochs=30", "trainer.checkpoint.every_n_epochs=5"]
    reference = straight(make_cfg, tmp_path / "straight", *length)
    first = tmp_path / "run"
    straight(make_cfg, first, "trainer.max_epochs=2", "trainer.checkpoint.every_n_epochs=5")
    both = [popen("resume", str(first), "trainer.max_epochs=30", cwd=tmp_path) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), *p.communicate()) for p in both)
    (ok, _, ok_err), (refused, _, refused_err) = outcomes
    assert (ok, refused) == (0, 2), ok_err + refused_err
    holder = next(p.pid for p in both if p.returncode == 0)
    assert f"in use by pid {holder} on " in refused_err
    assert len(refused_err.strip().splitlines()) == 1
    assert_same_weights(reference, first)
    acc = EventAccumulator(str(first / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("train/loss", "val/acc"):
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(set(steps)), tag  # each once, in order
    assert [e.step for e in acc.Scalars("val/acc")] == [36 * (i + 1) for i in range(30)]
    assert len(json.loads((first / "run.json").read_text())["attempts"]) == 2


@pytest.mark.slow
def test_two_trains_into_one_named_folder_at_once(tmp_path, data_dir):
    run_dir = tmp_path / "shared"
    args = ["train", f"hydra.run.dir={run_dir}", *cli_args(data_dir, "trainer.max_epochs=8")]
    both = [popen(*args, cwd=tmp_path) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.communicate()[1]) for p in both)
    (ok, ok_err), (refused, refused_err) = outcomes
    assert (ok, refused) == (0, 2), ok_err + refused_err
    assert "in use by pid" in refused_err or "holds a run already" in refused_err
    manifest = checkpoint_files.read_manifest(run_dir / "checkpoints")
    assert manifest["files"]
    for name in manifest["files"]:
        checkpoint_files.load(run_dir / "checkpoints" / name)  # size and sha256 verified
    record = json.loads((run_dir / "run.json").read_text())
    assert len(record["attempts"]) == 1 and status(run_dir)["status"] == "completed"


def test_eval_is_refused_while_another_process_writes_the_run(make_cfg, tmp_path, capsys):
    run_dir = straight(make_cfg, tmp_path / "run", "trainer.max_epochs=1")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path; from trainlab import "
         f"lock; lock.own(Path({str(run_dir)!r})); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        assert cli.main(["eval", str(run_dir)]) == 2
        assert f"in use by pid {holder.pid}" in capsys.readouterr().err
        assert not (run_dir / "eval").exists()
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(["eval", str(run_dir)]) == 0


# ---- trainer.resume=auto continues a trainlab run, and nothing else ----


def auto(run_dir: Path, data_dir: Path, *overrides: str) -> list[str]:
    return ["train", f"hydra.run.dir={run_dir}", "trainer.resume=auto",
            *cli_args(data_dir, *overrides)]  # fmt: skip


def test_resume_auto_never_overwrites_a_finished_run_whose_manifest_is_gone(
    make_cfg, tmp_path, data_dir, capsys
):
    run_dir = straight(make_cfg, tmp_path / "run", "trainer.max_epochs=1")
    (run_dir / "checkpoints" / "manifest.json").unlink()
    before = snapshot(run_dir)
    assert cli.main(auto(run_dir, data_dir, "trainer.max_epochs=1")) == 2
    assert "holds a finished run's results" in capsys.readouterr().err
    assert snapshot(run_dir) == before
    # Nor with another config: refused for the change itself.
    assert cli.main(auto(run_dir, data_dir, "trainer.max_epochs=1", "optimizer.lr=0.5")) == 2
    assert "resume would change optimizer.lr (0.01 -> 0.5)" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_resume_auto_refuses_a_folder_that_is_not_a_trainlab_run(tmp_path, data_dir, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes")
    (foreign / ".draft.abc123.tmp").write_text("my own temp file")
    before = snapshot(foreign)
    assert cli.main(auto(foreign, data_dir, "trainer.max_epochs=1")) == 2
    err = capsys.readouterr().err
    assert "holds files that are not a trainlab run (.draft.abc123.tmp, notes.txt)" in err
    assert snapshot(foreign) == before and not (foreign / ".hydra").exists()


def test_only_trainlabs_own_temp_files_are_swept(tmp_path):
    for name in (".config.yaml.k2j4_x9a.tmp", ".run.json.1234.tmp", ".draft.abc123.tmp",
                 ".config.yaml.tmp"):  # fmt: skip
        (tmp_path / name).write_text("x")
    swept = rundir.sweep_temp_files(tmp_path, rundir.RECORDS)
    assert sorted(p.name for p in swept) == [".config.yaml.k2j4_x9a.tmp", ".run.json.1234.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".config.yaml.tmp", ".draft.abc123.tmp"]


def test_a_run_stopped_before_its_first_checkpoint_starts_over_in_place_exactly(
    make_cfg, tmp_path, data_dir, monkeypatch
):
    reference = straight(make_cfg, tmp_path / "straight", "trainer.max_epochs=2")
    run_dir = rundir.claim(tmp_path / "run")
    real = train.preflight

    def signal_in_setup(*args):  # SIGTERM during start-up: accepted, recorded, not trained
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(train, "preflight", signal_in_setup)
    with pytest.raises(SystemExit) as stop:
        train.run(make_cfg(*RUN, "trainer.max_epochs=2"), run_dir, launch=None)
    assert stop.value.code == 143
    assert status(run_dir)["status"] == "interrupted"
    assert not checkpoint_files.has_checkpoint(run_dir / "checkpoints")
    monkeypatch.setattr(train, "preflight", real)
    # trainer.resume=auto (a requeued job) starts it over in place, to the same numbers.
    assert cli.main(auto(run_dir, data_dir, "trainer.max_epochs=2")) == 0
    assert status(run_dir)["status"] == "completed"
    assert_same_weights(reference, run_dir)
    attempts = json.loads((run_dir / "run.json").read_text())["attempts"]
    assert len(attempts) == 2 and "started_over" in attempts[1]


# ---- records on a full disk ----


def disk_full_for(monkeypatch, *names: str) -> None:
    """Writes of these files fail as on a full disk (the temp file is written, fsync fails)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if any(f"/.{name}." in path for name in names):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(rundir.os, "fsync", fsync)


def test_config_yaml_survives_a_full_disk_on_a_resume_with_changes(
    make_cfg, tmp_path, monkeypatch, capsys
):
    run_dir = straight(make_cfg, tmp_path / "run", "trainer.max_epochs=1")
    before = (run_dir / "config.yaml").read_bytes()
    disk_full_for(monkeypatch, "config.yaml")
    code = train.resume(run_dir, ["trainer.max_epochs=2", "optimizer.lr=0.1"], ["optimizer.lr"], [])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: could not write {run_dir / 'config.yaml'} (No space left on device (disk "
        "full?)); its previous version is kept"
    ]
    assert (run_dir / "config.yaml").read_bytes() == before
    assert status(run_dir)["status"] == "failed" and "config.yaml" in status(run_dir)["reason"]
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.undo()
    # Every verb still reads the run.
    assert train.resume(run_dir, ["trainer.max_epochs=2"], [], []) == 0
    assert cli.main(["eval", str(run_dir)]) == 0


def test_status_json_survives_a_full_disk_at_the_end(make_cfg, tmp_path, monkeypatch, capsys):
    run_dir = rundir.claim(tmp_path / "run")
    real = results.record_results

    def full_from_here(*args):
        disk_full_for(monkeypatch, "metrics.json", "status.json")
        return real(*args)

    monkeypatch.setattr(results, "record_results", full_from_here)
    with pytest.raises(RecordWriteError, match=r"could not write .*metrics.json"):
        train.run(make_cfg(*RUN, "trainer.max_epochs=1"), run_dir, launch=None)
    assert status(run_dir)["status"] == "running"  # the previous version, whole
    said = capsys.readouterr()
    assert "could not write" in said.out + said.err and "status.json" in said.out + said.err
    assert not lock.in_use(run_dir)  # `trainlab report` tells a dead "running" by this:
    assert sweep.read_run(run_dir).status == "interrupted"


def test_a_config_yaml_that_does_not_parse_names_the_copy_in_a_checkpoint(
    make_cfg, tmp_path, capsys
):
    run_dir = straight(make_cfg, tmp_path / "run", "trainer.max_epochs=1")
    (run_dir / "config.yaml").write_text("model: [unclosed\n")
    assert cli.main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: does not parse at line 2" in err
    assert "every checkpoint holds a copy (its 'config' entry), e.g. " in err


@pytest.mark.parametrize("record", ["run.json", "status.json"])
def test_a_damaged_record_is_one_line(record, make_cfg, tmp_path, capsys):
    run_dir = straight(make_cfg, tmp_path / "run", "trainer.max_epochs=1")
    (run_dir / record).write_text('{"status": "runn')
    code = train.resume(run_dir, ["trainer.max_epochs=2"], [], [])
    err = capsys.readouterr().err
    if record == "run.json":  # a run's history: refused, never replaced
        assert code == 2 and f"{run_dir / 'run.json'}: unreadable" in err
        assert (run_dir / "run.json").read_text() == '{"status": "runn'
    else:  # status.json is rewritten by the resume anyway
        assert code == 0 and status(run_dir)["status"] == "completed"


# ---- signals in every phase ----

PHASES = {
    # where the signal arrives: which function sends it on its first call
    "start-up": (train, "preflight"),
    "validation": (loop, "evaluate"),
    "final test": (results, "evaluation_of"),  # picks the test's evaluation, as it starts
}


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: signal.Signals(s).name
)
@pytest.mark.parametrize("phase", PHASES)
def test_a_signal_in_any_phase_is_recorded_and_the_run_resumes_exactly(
    phase, signum, make_cfg, tmp_path, monkeypatch, reference_run
):
    module, name = PHASES[phase]
    real, calls = getattr(module, name), []

    def with_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, with_signal)
    run_dir = rundir.claim(tmp_path / "run")
    with pytest.raises(SystemExit) as stop:
        train.run(make_cfg(*RUN, "trainer.max_epochs=2"), run_dir, launch=None)
    assert stop.value.code == 128 + signum
    assert status(run_dir) | {"reason": signal.Signals(signum).name} == status(run_dir)
    assert status(run_dir)["status"] == "interrupted"
    assert not (run_dir / "metrics.json").exists()  # a test cut short records nothing
    if phase == "start-up":  # stopped before training: nothing trained, nothing saved
        assert not checkpoint_files.read_manifest(run_dir / "checkpoints")["files"]
    monkeypatch.setattr(module, name, real)
    assert train.resume(run_dir, [], [], argv=[]) == 0
    assert status(run_dir)["status"] == "completed"
    assert_same_weights(reference_run, run_dir)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
    from conftest import TINY, compose_cfg

    out = tmp_path_factory.mktemp("reference")
    cfg = compose_cfg([f"paths.data_dir={data_dir}", f"paths.output_dir={out}", *TINY, *RUN,
                       "trainer.max_epochs=2"])  # fmt: skip
    run_dir = rundir.claim(out / "run")
    train.run(cfg, run_dir, launch=None)
    return run_dir


@pytest.mark.slow
def test_sighup_during_the_real_start_up_then_resume(tmp_path, data_dir):
    """The real process, signalled as soon as its run folder exists: Hydra, the torch import
    and the build are still running. It records the stop; `trainlab resume` starts it over."""
    run_dir = tmp_path / "run"
    proc = popen("train", f"hydra.run.dir={run_dir}",
                 *cli_args(data_dir, "trainer.max_epochs=1"), cwd=tmp_path)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (run_dir / lock.LOCK_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert status(run_dir) == status(run_dir) | {"status": "interrupted", "reason": "SIGHUP"}
    assert "before training (nothing to save); `trainlab resume" in out
    done = run_cli("resume", str(run_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert status(run_dir)["status"] == "completed"


@pytest.mark.slow
def test_a_signal_between_sweep_jobs_ends_the_sweep_and_the_sweep_continues(
    tmp_path, data_dir, monkeypatch
):
    real = results.print_summary

    def then_a_signal(*args):  # job 0 has finished and recorded everything
        real(*args)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(results, "print_summary", then_a_signal)
    args = ["train", "-m", f"paths.output_dir={tmp_path / 'out'}", *cli_args(data_dir),
            "trainer.max_epochs=1", "seed=0,1,2"]  # fmt: skip
    assert cli.main(args) == 143
    (sweep_dir,) = (tmp_path / "out" / "multirun").iterdir()
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [status(j)["status"] for j in jobs] == ["completed", "interrupted"]
    assert status(jobs[1])["reason"] == "SIGTERM"
    monkeypatch.setattr(results, "print_summary", real)
    assert cli.main([*args, f"hydra.sweep.dir={sweep_dir}", "trainer.resume=auto"]) == 0
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [status(j)["status"] for j in jobs] == ["completed"] * 3
    assert "started_over" in json.loads((jobs[1] / "run.json").read_text())["attempts"][1]


# ---- results that are what they say ----


def test_with_on_error_continue_the_test_and_summary_name_the_checkpoint_that_exists(
    make_cfg, tmp_path, monkeypatch, capsys
):
    real = checkpoint_files.commit

    def best_fails_after_epoch_1(ckpt_dir, payload, info, policy, best=False, best_payload=None):
        if best and info["epoch"] > 1:
            raise checkpoint_files.CheckpointSaveError("could not write best (disk full?)")
        return real(ckpt_dir, payload, info, policy, best, best_payload)

    monkeypatch.setattr(checkpoint_files, "commit", best_fails_after_epoch_1)
    cfg = make_cfg(*RUN, "trainer.max_epochs=4", "trainer.checkpoint.on_error=continue",
                   "trainer.early_stopping.patience=null")  # fmt: skip
    run_dir = rundir.claim(tmp_path / "run")
    results = train.run(cfg, run_dir, launch=None)
    assert results["best"]["epoch"] == 1  # the checkpoint that was tested
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best"]["epoch"] == 1
    out = capsys.readouterr().out
    lost = re.search(
        r"the best validation was at step \d+ \(epoch (\d)\) but its checkpoint was not "
        r"written; testing best.pt = step_36.pt from step 36",
        out,
    )
    assert lost and int(lost.group(1)) > 1
    assert "  best:        epoch 1 of 4" in out
    assert cli.main(["eval", str(run_dir)]) == 0
    evaluated = json.loads((run_dir / "eval" / "test-best.json").read_text())
    assert evaluated["metrics"] == metrics["test"] and evaluated["epoch"] == 1


@pytest.mark.parametrize("cell", ["nan", "inf", "-Infinity", "1e39"])
def test_non_finite_csv_values_are_refused_naming_the_row_and_column(cell, tmp_path, capsys):
    table = tmp_path / "t.csv"
    files.write_csv(table, rows=30)
    lines = table.read_text().splitlines()
    cells = lines[5].split(",")
    cells[2] = cell
    lines[5] = ",".join(cells)
    table.write_text("\n".join(lines) + "\n")
    args = ["train", "dataset=csv", "model=mlp", "dataset.features=[f1,f2,f3,f4]",
            f"dataset.path={table}", f"paths.output_dir={tmp_path / 'out'}"]  # fmt: skip
    assert cli.main(args) == 4
    err = capsys.readouterr().err
    assert f"{table}: row 6, column 'f3' is '{cell}'" in err and "finite" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_a_non_finite_regression_target_is_refused(tmp_path, capsys):
    table = tmp_path / "t.csv"
    files.write_csv(table, rows=30)
    lines = table.read_text().splitlines()
    lines[3] = ",".join([*lines[3].split(",")[:-1], "nan"])
    table.write_text("\n".join(lines) + "\n")
    args = ["train", "dataset=csv", "model=mlp", "dataset.features=[f1,f2,f3,f4]",
            "dataset.task=regression", "dataset.target=score", "dataset.num_outputs=1",
            "loss=mse", "dataset.monitor=val/rmse", f"dataset.path={table}",
            f"paths.output_dir={tmp_path / 'out'}"]  # fmt: skip
    assert cli.main(args) == 4
    assert "row 4, column 'score' is 'nan': targets must be finite" in capsys.readouterr().err


def test_predict_uses_the_class_names_the_run_was_trained_with(make_cfg, data_dir, tmp_path):
    table = tmp_path / "train.csv"
    files.write_csv(table, rows=90)
    cfg = make_cfg("dataset=csv", "model=mlp", "dataset.features=null", "trainer.max_epochs=2",
                   "trainer.batch_size=16", f"dataset.path={table}",
                   "dataset.input_shape=[5]")  # fmt: skip
    run_dir = rundir.claim(tmp_path / "run")
    train.run(cfg, run_dir, launch=None)
    new = tmp_path / "new.csv"
    files.write_csv(new, rows=6, seed=3)

    def predict(name: str) -> str:
        out = tmp_path / name
        assert cli.main(["predict", str(run_dir), "--input", str(new), "--output", str(out)]) == 0
        return out.read_text()

    before = predict("a.csv")
    # The training file changes after the run: a row with a class that sorts first, and a
    # column that was not there.
    text = table.read_text().splitlines()
    text[0] += ",extra"
    text = [text[0]] + [line + ",0" for line in text[1:]] + ["0,0,0,0,aardvark,0,0"]
    table.write_text("\n".join(text) + "\n")
    assert predict("b.csv") == before
    header = before.splitlines()[0]
    assert header == "input,prediction,p_setosa,p_versicolor,p_virginica"
    stored = json.loads((run_dir / "run.json").read_text())["data"]
    assert stored == {"classes": ["setosa", "versicolor", "virginica"], "standardize": None,
                      "features": ["f1", "f2", "f3", "f4", "score"]}  # fmt: skip


def test_a_corrupt_image_is_named(make_cfg, data_dir, tmp_path, capsys):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(data_dir / "images" / "train", images)
    (images / "cats" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cfg = make_cfg("dataset=image_folder", "model=cnn", f"dataset.train_dir={images}",
                   "trainer.batch_size=4", "dataset.num_workers=2")  # fmt: skip
    run_dir = rundir.claim(tmp_path / "run")
    with pytest.raises(DataError) as info:
        train.run(cfg, run_dir, launch=None)
    assert rundir.message_of(info.value).startswith(f"{images / 'cats' / '3.png'}: not a readable")
    assert status(run_dir)["reason"].startswith(f"{images / 'cats' / '3.png'}: not a readable")


def test_max_epochs_on_a_run_bounded_by_max_steps_is_refused(make_cfg, tmp_path, capsys):
    run_dir = straight(make_cfg, tmp_path / "run", "trainer.max_steps=40")
    assert train.resume(run_dir, ["trainer.max_epochs=10"], [], []) == 2
    err = capsys.readouterr().err
    assert "trainer.max_epochs=10: has no effect, the run is bounded by trainer.max_steps=40" in err
    assert train.resume(run_dir, ["trainer.max_steps=80"], [], []) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 80


# ---- names and paths ----


@pytest.mark.parametrize("name", ["../x", "../../etc", "a/b", "..", "tab\tname", "n" * 101])
def test_a_name_is_one_folder_name(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", f"name={name}", "trainer.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: name={name!r}: must be one folder name")
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_output_dir_that_is_a_file_or_read_only_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert cli.main(["train", "paths.output_dir=afile", "trainer.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "paths.output_dir: cannot create" in err and "a file is in the way" in err
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        assert cli.main(["train", "paths.output_dir=ro", "trainer.max_epochs=1"]) == 2


def test_relative_paths_are_stored_absolute_and_every_verb_works_from_another_folder(
    tmp_path, data_dir, monkeypatch
):
    launch, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    launch.mkdir()
    elsewhere.mkdir()
    files.write_csv(launch / "table.csv", rows=90)
    monkeypatch.chdir(launch)
    args = ["train", "dataset=csv", "model=mlp", "dataset.features=[f1,f2,f3,f4]",
            "dataset.path=table.csv", "paths.output_dir=out", f"paths.data_dir={data_dir}",
            "trainer.max_epochs=2", "trainer.batch_size=16"]  # fmt: skip
    assert cli.main(args) == 0
    (run,) = (launch / "out" / "runs").iterdir()
    stored = OmegaConf.load(run / "config.yaml")
    assert stored.dataset.path == str(launch / "table.csv")
    assert stored.paths.output_dir == str(launch / "out")
    tested = json.loads((run / "metrics.json").read_text())["test"]

    monkeypatch.chdir(elsewhere)  # a user in another folder
    assert cli.main(["eval", str(run)]) == 0
    assert json.loads((run / "eval" / "test-best.json").read_text())["metrics"] == tested
    files.write_csv(elsewhere / "new.csv", rows=5, seed=3)
    assert cli.main(["predict", str(run), "--input", "new.csv", "--output", "p.csv"]) == 0
    assert len((elsewhere / "p.csv").read_text().splitlines()) == 6
    assert cli.main(["resume", str(run), "trainer.max_epochs=3"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3
