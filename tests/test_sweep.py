"""Sweeps: failing jobs are rows, folders never collide, Optuna studies survive a kill, and
`trainlab report` turns any folder of runs into one table."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import markdown
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import TINY
from trainlab import checkpoint_files, rundir, sweep, train

pytestmark = pytest.mark.slow


def multirun(tmp_path: Path, data_dir: Path, *args: str, wait: bool = True):
    paths = [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.data_dir={data_dir}"]
    cmd = [sys.executable, "-m", "trainlab", "train", "-m", *paths, *TINY, *args]
    if not wait:
        return subprocess.Popen(
            cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def hparams_of(job: Path) -> tuple[dict, dict]:
    acc = EventAccumulator(str(job / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = {k: v.ListFields()[0][1] for k, v in info.session_start_info.hparams.items()}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metrics = {
        m.name.tag: acc.Scalars(m.name.tag)[-1].value for m in experiment.experiment.metric_infos
    }
    return values, metrics


def test_a_failing_job_is_a_row_and_the_sweep_goes_on(tmp_path, data_dir):
    done = multirun(tmp_path, data_dir, "model=mlp", "model.hidden_sizes=[16],[-1],[32],[64]")
    assert done.returncode == 1
    assert "error: 1 of 4 jobs did not complete: 1_model.hidden_sizes=_-1 (failed)" in done.stderr
    (root,) = (tmp_path / "outputs" / "multirun").iterdir()
    lines = (root / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("job,model.hidden_sizes,status,best val/acc")
    assert len(lines) == 5
    failed = [line for line in lines if "failed" in line]
    assert len(failed) == 1 and "negative dimension -1" in failed[0]
    jobs = sorted(p for p in root.iterdir() if p.is_dir())
    completed = [
        j for j in jobs if json.loads((j / "status.json").read_text())["status"] == "completed"
    ]
    assert len(completed) == 3
    for job in completed:
        assert (job / "checkpoints" / "best.pt").is_file()
        assert list((job / "tb").glob("events.out.tfevents.*"))

    # TensorBoard: the same hparam keys in every job, with the real metrics.
    seen = [hparams_of(job) for job in completed]
    assert {frozenset(values) for values, _ in seen} == {frozenset(seen[0][0])}
    assert {"model.hidden_sizes", "seed", "optimizer.lr", "model"} <= set(seen[0][0])
    assert sorted(str(values["model.hidden_sizes"]) for values, _ in seen) == [
        "[16]",
        "[32]",
        "[64]",
    ]
    for job, (_, metrics) in zip(completed, seen, strict=True):
        results = json.loads((job / "metrics.json").read_text())
        assert metrics["test/acc"] == pytest.approx(results["test"]["test/acc"])
        assert metrics["best/val/acc"] == pytest.approx(results["best"]["val/acc"])


def test_two_sweeps_started_together_never_share_a_folder(tmp_path, data_dir):
    procs = [multirun(tmp_path, data_dir, "seed=0,1", wait=False) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    sweeps = sorted((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 2
    for root in sweeps:
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["0_seed=0", "1_seed=1"]


def test_claiming_a_sweep_folder_with_a_taken_stamp_picks_a_new_one(tmp_path):
    taken = tmp_path / "multirun" / "2026-01-01_00-00-00_000000"
    taken.mkdir(parents=True)
    assert rundir.claim(taken) == taken.with_name(taken.name + "-1")


# Brute force over six learning rates: every value once, and exactly one of them diverges.
OPTUNA = [
    "hydra/sweeper=trainlab_optuna", "optimizer=sgd", "loss=mse", "trainer.max_epochs=3",
    "hydra.sweeper.n_trials=6", "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
    "optimizer.lr=choice(0.01,0.02,0.03,0.04,0.05,1e6)",
]  # fmt: skip


def study_of(root: Path):
    import optuna

    return optuna.load_study(study_name=None, storage=f"sqlite:///{root / 'optuna.db'}")


def trials(root: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(root / "optuna.db") as db:
        return db.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def test_optuna_fails_a_diverged_trial_and_continues_after_a_kill(tmp_path, data_dir):
    root = tmp_path / "study"
    proc = multirun(tmp_path, data_dir, *OPTUNA, f"hydra.sweep.dir={root}", wait=False)
    deadline, killed = time.monotonic() + 300, None
    while time.monotonic() < deadline and proc.poll() is None:
        finished = [p for p in root.glob("*/metrics.json")] + [
            p for p in root.glob("*/status.json") if "diverged" in p.read_text()
        ]
        # Half-way, and with a trial that has saved a checkpoint and not finished.
        saved = [m.parent.parent for m in root.glob("*/checkpoints/manifest.json")]
        running = [j for j in saved if not (j / "metrics.json").exists()
                   and "diverged" not in (j / "status.json").read_text()]  # fmt: skip
        if len(finished) >= 3 and running:
            proc.send_signal(signal.SIGKILL)
            killed = running[0]
            break
        time.sleep(0.01)
    proc.wait()
    assert killed is not None, "the sweep ended before a trial could be killed mid-training"
    assert 3 <= len(list(root.glob("*_optimizer*"))) < 6, "kill the sweep half-way"
    assert study_of(root).direction.name == "MAXIMIZE"  # trainer.monitor=val/acc

    done = multirun(tmp_path, data_dir, *OPTUNA, f"hydra.sweep.dir={root}")
    states = trials(root)
    assert len(states) == 6, done.stdout[-3000:] + done.stderr[-3000:]
    assert [n for n, _ in states] == list(range(6))
    assert sorted(s for _, s in states).count("COMPLETE") == 5
    assert sorted(s for _, s in states).count("FAIL") == 1
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] != ".")
    assert len(folders) == 6 and [f.split("_")[0] for f in folders] == [str(i) for i in range(6)]
    diverged = [f for f in folders if "1000000.0" in f]
    assert len(diverged) == 1
    assert json.loads((root / diverged[0] / "status.json").read_text())["status"] == "diverged"
    assert done.returncode == 1  # a trial failed: the sweep says so
    assert "1 of 6 jobs did not complete" in done.stderr
    # The killed trial ran again in its folder, from its checkpoint, and finished.
    attempts = json.loads((killed / "run.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["resumed_from"].startswith("step_"), attempts
    assert json.loads((killed / "status.json").read_text())["status"] == "completed"


def test_report_aggregates_seeds_and_renders_as_markdown(make_cfg, tmp_path, capsys):
    root = tmp_path / "runs"
    for lr in ("0.01", "0.003"):
        for seed in (0, 1, 2):
            overrides = [f"optimizer.lr={lr}", f"seed={seed}"]
            run_dir = rundir.claim(root / f"lr{lr}-seed{seed}")
            train.run(
                make_cfg(*overrides, "model=mlp"),
                run_dir,
                launch={"overrides": overrides, "choices": {}},
            )
    capsys.readouterr()
    assert sweep.report(root, sort="optimizer.lr", group_by="seed", fmt="md") == 0
    text = capsys.readouterr().out
    html = markdown.markdown(text, extensions=["tables"])
    assert html.count("<tr>") == 3 and "<th>best val/acc</th>" in html
    assert "<th>n (seed)</th>" in html
    for lr in ("0.003", "0.01"):
        rows = [r for r in sweep.find_runs(root) if f"lr{lr}" in r.name]
        best = [json.loads((r / "metrics.json").read_text())["best"]["val/acc"] for r in rows]
        mean = sum(best) / 3
        assert f"| {lr} | 3 | 3 | {mean:.4f} ± " in text

    assert sweep.report(root, sort="best", group_by=None, fmt="csv") == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert (
        csv_lines[0]
        == "job,optimizer.lr,seed,status,best val/acc,final val/acc,test acc,epochs,time_s"
    )
    values = [float(line.split(",")[4]) for line in csv_lines[1:]]
    assert values == sorted(values) and len(values) == 6


def test_report_shows_unfinished_runs_from_their_checkpoints_and_sorts_descending(
    make_cfg, tmp_path, capsys, monkeypatch
):
    from test_resume import interrupt_at, poison_training_forward
    from trainlab import cli

    root = tmp_path / "runs"
    short = ["model=mlp", "trainer.max_epochs=3"]
    for seed in (0, 1):  # two that finish
        launch = {"overrides": [f"seed={seed}"], "choices": {}}
        train.run(make_cfg(*short, f"seed={seed}"), rundir.claim(root / f"done{seed}"), launch)
    with monkeypatch.context() as m:  # one stopped hard mid-epoch 3 (Ctrl-C twice)
        interrupt_at(m, 2 * 36 + 5, "crash")
        with pytest.raises(SystemExit):
            train.run(make_cfg(*short, "seed=2"), rundir.claim(root / "stopped"), None)
    with monkeypatch.context() as m:  # one diverged in epoch 1, before any checkpoint
        poison_training_forward(m, at_call=10)
        with pytest.raises(train.Diverged):
            train.run(make_cfg(*short, "seed=3"), rundir.claim(root / "diverged"), None)
    # One whose process died without a word: status.json still says running, the lock is free.
    shutil.copytree(root / "stopped", root / "killed")
    rundir.write_status(root / "killed", "running")

    capsys.readouterr()
    assert cli.main(["report", str(root), "--sort", "best", "--desc", "--format", "csv"]) == 0
    header, *body = csv.reader(io.StringIO(capsys.readouterr().out))
    assert ",".join(header) == "job,seed,status,best val/acc,final val/acc,test acc,epochs,time_s"
    rows = {r[0]: r for r in body}
    assert len(rows) == len(body) == 5
    assert {j: r[2].split(":")[0] for j, r in rows.items()} == {
        "done0": "completed", "done1": "completed", "stopped": "interrupted",
        "killed": "interrupted", "diverged": "diverged",
    }  # fmt: skip
    assert rows["killed"][2] == "interrupted: the process is gone (killed?)"
    assert rows["diverged"][2].startswith("diverged: train/loss is nan at step 10")
    # The stopped run: its best checkpoint's value and its last checkpoint's epoch (2).
    manifest = checkpoint_files.read_manifest(root / "stopped" / "checkpoints")
    best = manifest["files"][manifest["best"]]["metric"]
    assert float(rows["stopped"][3]) == pytest.approx(best, abs=5e-5)
    assert rows["stopped"][6] == rows["killed"][6] == "2" and rows["stopped"][4:6] == ["", ""]
    assert rows["diverged"][3] == ""  # nothing committed
    # --desc: the best values from high to low, the run without one last.
    order = [r[0] for r in body]
    values = [float(rows[j][3]) for j in order[:-1]]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]
    assert order[-1] == "diverged"


def test_job_folder_names_are_safe_and_capped():
    assert sweep.job_dirname("model.layers=[a/b],x=1") == "model.layers=_a_b_,x=1"
    long = ",".join(f"key{i}=value{i}" for i in range(20))
    name = sweep.job_dirname(long)
    assert len(name) == sweep.MAX_DIRNAME and name != sweep.job_dirname(long + ",z=2")
    assert sweep.common_override_keys(["seed=0,1", "model=mlp", "optimizer.lr=0.1"]) == [
        "model",
        "optimizer.lr",
    ]


def test_parallel_joblib_jobs_each_train_on_their_share_of_the_cores(
    tmp_path, data_dir, monkeypatch
):
    from trainlab import cli

    monkeypatch.chdir(tmp_path)
    short = [t for t in TINY if not t.startswith("trainer.num_threads=")]
    args = ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1",
            "model=mlp", *short, f"paths.output_dir={tmp_path / 'outputs'}",
            f"paths.data_dir={data_dir}"]  # fmt: skip
    assert cli.main(args) == 0
    (root,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p for p in root.iterdir() if p.is_dir())
    share = max(1, (os.cpu_count() or 1) // 2)
    assert len(jobs) == 2
    for job in jobs:
        # Recorded in the config (a resume uses it) and the count the job trained with.
        assert f"num_threads: {share}\n" in (job / "config.yaml").read_text()
        env = json.loads((job / "run.json").read_text())["environment"]
        assert env["num_threads"] == share, env
    assert len({json.loads((j / "run.json").read_text())["attempts"][0]["pid"] for j in jobs}) == 2


def test_launcher_configs_compose_and_parallel_jobs_share_the_cores(monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from trainlab.cli import CONF_DIR
    from trainlab.job import _parallel_jobs

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        slurm = compose("train", ["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
        joblib = compose(
            "train", ["hydra/launcher=joblib"], return_hydra_config=True
        ).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.gpus_per_node == 1
    assert slurm.signal_delay_s == 120 and slurm.timeout_min == 240
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert _parallel_jobs(joblib) == 8  # n_jobs=-1: one per core
    assert _parallel_jobs(OmegaConf.create({"n_jobs": 2})) == 2
    assert _parallel_jobs(OmegaConf.create({"n_jobs": -2})) == 7
    assert _parallel_jobs(OmegaConf.create({})) == 1


def fake_run(root: Path, name: str, overrides: list[str], status: str, metrics: object) -> Path:
    """A run folder as a run leaves it, written by hand: the report reads only these records."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / "status.json").write_text(json.dumps({"status": status, "updated": "x"}))
    if metrics is not None:
        text = metrics if isinstance(metrics, str) else json.dumps(metrics)
        (run / "metrics.json").write_text(text)
    return run


def results(monitor: str, best: float, mode: str) -> dict:
    test = {"test/" + monitor.partition("/")[2]: best}
    return {"monitor": monitor, "mode": mode, "best": {monitor: best, "epoch": 2},
            "final": {monitor: best}, "test": test, "epochs": 2, "wall_s": 1.5}  # fmt: skip


def test_report_sorts_numbers_as_numbers_skips_bad_records_and_keeps_tasks_apart(tmp_path, capsys):
    root = tmp_path / "runs"
    for lr, acc in (("0.01", 0.5), ("0.003", 0.7), ("1e-4", 0.6), ("0.2", 0.4)):
        fake_run(root, f"acc-{lr}", [f"optimizer.lr={lr}", "trainer.resume=auto"],
                 "completed", results("val/acc", acc, "max"))  # fmt: skip
    fake_run(root, "loss", ["optimizer.lr=0.05", "loss=mse"], "completed",
             results("val/loss", 0.25, "min"))  # fmt: skip
    fake_run(root, "torn", ["optimizer.lr=0.07"], "completed", '{"monitor": "val/acc", "be')
    fake_run(root, "odd", ["optimizer.lr=0.08"], "completed", {"monitor": "val/acc", "best": 3})
    capsys.readouterr()
    assert sweep.report(root, sort="optimizer.lr", group_by=None, fmt="csv") == 0
    out = capsys.readouterr()
    header, *body = csv.reader(io.StringIO(out.out))
    # By value: 1e-4 < 0.003 < 0.01 < 0.05 < 0.07 < 0.08 < 0.2 (as text 1e-4 would be last).
    assert [r[header.index("optimizer.lr")] for r in body] == [
        "1e-4", "0.003", "0.01", "0.05", "0.07", "0.08", "0.2",
    ]  # fmt: skip
    assert "trainer.resume" not in header  # bookkeeping, not a swept key
    # One column group per monitored metric: a loss is never ranked against an accuracy.
    assert {"best val/acc", "best val/loss", "test acc", "test loss"} <= set(header)
    rows = {r[0]: dict(zip(header, r, strict=True)) for r in body}
    assert rows["loss"]["best val/loss"] == "0.25" and rows["loss"]["best val/acc"] == ""
    assert rows["acc-0.003"]["best val/acc"] == "0.7" and rows["acc-0.003"]["best val/loss"] == ""
    # A damaged metrics.json: a warning naming the file, and the run is still a row.
    for name in ("torn", "odd"):
        assert f"warning: skipping {root / name / 'metrics.json'}: " in out.err
        assert rows[name]["status"] == "completed" and rows[name]["best val/acc"] == ""
    assert sweep.report(root, sort="best", group_by=None, fmt="csv") == 0
    _, *body = csv.reader(io.StringIO(capsys.readouterr().out))
    assert [r[0] for r in body][:4] == ["acc-0.2", "acc-0.01", "acc-1e-4", "acc-0.003"]
    assert sweep.report(root, sort="-best val/acc", group_by=None, fmt="md") == 0
    text = capsys.readouterr().out
    # The best run of each metric, with the command that trains it again.
    assert (
        "best val/acc: 0.7000 (acc-0.003); train it again with: trainlab train "
        "optimizer.lr=0.003\n" in text
    )
    assert (
        "best val/loss: 0.2500 (loss); train it again with: trainlab train "
        "optimizer.lr=0.05 loss=mse\n" in text
    )


def test_each_job_of_a_sweep_is_timed_from_its_own_start(tmp_path, data_dir, monkeypatch):
    from datetime import datetime

    from trainlab import cli

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "grid"
    paths = [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.data_dir={data_dir}"]
    args = ["train", "-m", "model=mlp", "seed=0,1,2", *TINY, *paths, f"hydra.sweep.dir={root}"]
    assert cli.main(args) == 0
    jobs = sorted(p for p in root.iterdir() if p.is_dir() and p.name[0] != ".")
    times = {}
    for job in jobs:
        results = json.loads((job / "metrics.json").read_text())
        started = json.loads((job / "run.json").read_text())["attempts"][0]["started"]
        ended = json.loads((job / "status.json").read_text())["updated"]
        span = (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
        # Each job's clock starts with the job, not with the process that ran the ones before.
        assert results["train_s"] <= results["wall_s"] <= span + 0.01, (job.name, span)
        times[job.name] = f"{results['wall_s']:.1f}"
    with (root / "summary.csv").open(newline="") as f:  # the summary shows the same clock
        assert {r["job"]: r["time_s"] for r in csv.DictReader(f)} == times


def test_a_multi_objective_summary_lists_the_pareto_front(tmp_path):
    root = tmp_path / "study"
    for name, acc, params in (("big", 0.9, 1000), ("small", 0.8, 100), ("worse", 0.85, 2000),
                              ("also_worse", 0.8, 150)):  # fmt: skip
        fake_run(root, name, [f"model.width={params}"], "completed",
                 results("val/acc", acc, "max") | {"parameters": params})  # fmt: skip
    fake_run(root, "failed", ["model.width=1"], "failed", None)
    sweep.write_summary(root, ["val/acc", "parameters"], ["maximize", "minimize"])
    text = (root / "summary.md").read_text()
    front = text.split("## Pareto front (maximize val/acc, minimize parameters)\n\n")[1]
    assert front.splitlines()[2:] == ["| big | 0.9000 | 1000 |", "| small | 0.8000 | 100 |"]


def test_a_sweep_stopped_by_a_signal_keeps_the_stopped_job_in_its_summary(tmp_path, data_dir):
    root = tmp_path / "grid"
    proc = multirun(tmp_path, data_dir, "model=mlp", "seed=0,1", "trainer.max_epochs=30",
                    f"hydra.sweep.dir={root}", wait=False)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(root.glob("0_*/checkpoints/manifest.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # job 0 saves and stops; the sweep ends with it
    proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM
    with (root / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0_seed=0"]
    assert rows[0]["status"] == "interrupted: SIGTERM"
