"""Sweeps: failing jobs are rows, folders never collide, Optuna studies survive a kill, and
`trainlab report` turns any folder of runs into one table."""

from __future__ import annotations

import json
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
from trainlab import rundir, sweep, train

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


def trials(root: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(root / "optuna.db") as db:
        return db.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def test_optuna_fails_a_diverged_trial_and_continues_after_a_kill(tmp_path, data_dir):
    root = tmp_path / "study"
    proc = multirun(tmp_path, data_dir, *OPTUNA, f"hydra.sweep.dir={root}", wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        finished = [p for p in root.glob("*/metrics.json")] + [
            p for p in root.glob("*/status.json") if "diverged" in p.read_text()
        ]
        if len(finished) >= 3 or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= len(list(root.glob("*_optimizer*"))) < 6, "kill the sweep half-way"

    done = multirun(tmp_path, data_dir, *OPTUNA, f"hydra.sweep.dir={root}")
    states = trials(root)
    assert len(states) == 6, done.stdout[-3000:] + done.stderr[-3000:]
    assert [n for n, _ in states] == list(range(6))
    assert sorted(s for _, s in states).count("COMPLETE") == 5
    assert sorted(s for _, s in states).count("FAIL") == 1
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(folders) == 6 and [f.split("_")[0] for f in folders] == [str(i) for i in range(6)]
    diverged = [f for f in folders if "1000000.0" in f]
    assert len(diverged) == 1
    assert json.loads((root / diverged[0] / "status.json").read_text())["status"] == "diverged"
    assert done.returncode == 1  # a trial failed: the sweep says so
    assert "1 of 6 jobs did not complete" in done.stderr


def test_the_shipped_optuna_search_space_runs(tmp_path, data_dir):
    done = multirun(tmp_path, data_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                    "trainer.max_epochs=1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (root,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert [state for _, state in trials(root)] == ["COMPLETE", "COMPLETE"]
    header = (root / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("job,model.channels,optimizer.lr,optimizer.weight_decay,status")


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


def test_job_folder_names_are_safe_and_capped():
    assert sweep.job_dirname("model.layers=[a/b],x=1") == "model.layers=_a_b_,x=1"
    long = ",".join(f"key{i}=value{i}" for i in range(20))
    name = sweep.job_dirname(long)
    assert len(name) == sweep.MAX_DIRNAME and name != sweep.job_dirname(long + ",z=2")
    assert sweep.common_override_keys(["seed=0,1", "model=mlp", "optimizer.lr=0.1"]) == [
        "model",
        "optimizer.lr",
    ]


def test_launcher_configs_compose_and_parallel_jobs_share_the_cores(monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from trainlab.cli import CONF_DIR
    from trainlab.train import _parallel_jobs

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
