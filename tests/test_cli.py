"""The real command line in fresh processes: train, sweep, errors, start-up without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY, run_cli
from trainlab import rundir


def cli_args(tmp_path: Path, data_dir: Path, *overrides: str) -> list[str]:
    return [
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"paths.data_dir={data_dir}",
        *overrides,
    ]


def run_folders(tmp_path: Path) -> list[Path]:
    root = tmp_path / "outputs" / "runs"
    return sorted(root.iterdir()) if root.is_dir() else []


def scalar_tags(tb_dir: Path) -> set[str]:
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_help_and_cfg_answer_without_importing_torch():
    code = (
        "import sys\n"
        "from trainlab.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    for args in (["train", "--help"], ["train", "--cfg", "job"], ["--help"]):
        done = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO
        )
        assert done.returncode == 0, done.stderr
    help_text = subprocess.run(
        [sys.executable, "-c", code, "train", "--help"], capture_output=True, text=True
    ).stdout
    assert (
        "model: autoencoder, cnn, cnn1d, conv_autoencoder, dcgan, embedder, fcn, gan, gru, lenet, "
        "mae, mlp, multihead, resnet9, sequential, torchvision" in help_text
    )
    assert "scheduler: cosine, cosine_warm_restarts, exponential, lambda_warmup" in help_text
    # Each group's default, as conf/train.yaml's defaults list picks it.
    assert ", sequential, torchvision (default: cnn1d)\n" in help_text
    assert "  optimizer: adadelta, " in help_text and ", sgd (default: adam)\n" in help_text
    assert (
        "  experiment: binary, " in help_text
        and ", soft_labels_kl (none by default)\n" in help_text
    )


@pytest.mark.slow
def test_the_default_run_trains_to_the_promised_accuracy(tmp_path, data_dir):
    """`trainlab train` with nothing chosen: cnn1d on MNIST-1D, through the real CLI."""
    done = run_cli("train", *cli_args(tmp_path, data_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = run_folders(tmp_path)
    assert run_dir.name.endswith("-cnn1d-mnist1d")
    results = json.loads((run_dir / "metrics.json").read_text())
    print(f"default run: test/acc {results['test']['test/acc']:.4f} in {results['train_s']:.1f}s")
    assert results["epochs"] == 100
    assert results["test"]["test/acc"] >= 0.88
    assert f"  outputs:     {run_dir}" in done.stdout
    assert f"  tensorboard: trainlab tensorboard {run_dir}" in done.stdout


@pytest.mark.slow
def test_a_sweep_gives_each_job_its_own_folder_events_and_checkpoints(tmp_path, data_dir):
    done = run_cli(
        "train", "-m", "optimizer=sgd,adam", *cli_args(tmp_path, data_dir, *TINY), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split(",")[0] for p in jobs] == ["0_optimizer=sgd", "1_optimizer=adam"]
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
        assert len(list((job / "tb").glob("events.out.tfevents.*"))) == 1
        assert {"train/loss", "val/acc", "lr/group0"} <= scalar_tags(job / "tb")
        names = {p.name for p in (job / "checkpoints").iterdir()}
        assert {"last.pt", "best.pt", "manifest.json"} <= names
    assert json.loads((jobs[0] / "run.json").read_text())["choices"]["optimizer"] == "sgd"
    assert json.loads((jobs[1] / "run.json").read_text())["choices"]["optimizer"] == "adam"


@pytest.mark.slow
def test_two_runs_started_together_get_distinct_folders(tmp_path, data_dir):
    # paths.output_dir relative to the launch folder, as by default.
    overrides = ["paths.output_dir=outputs", f"paths.data_dir={data_dir}", *TINY]
    args = [sys.executable, "-m", "trainlab", "train", *overrides]
    procs = [
        subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    folders = run_folders(tmp_path)
    assert len(folders) == 2
    for folder in folders:
        assert (folder / "checkpoints" / "last.pt").is_file()
        # Stored absolute, so a resume from another folder finds the same places.
        stored = yaml.safe_load((folder / "config.yaml").read_text())
        assert stored["paths"]["output_dir"] == str(tmp_path / "outputs")


def test_claim_never_hands_out_the_same_folder_twice(tmp_path):
    first = rundir.claim(tmp_path / "runs" / "2026-01-01_00-00-00_000000-x")
    second = rundir.claim(tmp_path / "runs" / "2026-01-01_00-00-00_000000-x")
    assert first != second and first.is_dir() and second.is_dir()


def test_an_error_found_while_building_exits_2_and_removes_the_folder(tmp_path, data_dir):
    done = run_cli("train", *cli_args(tmp_path, data_dir, "model.num_outputs=3"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert (
        "error: model.num_outputs=3: the model gives outputs of shape [2, 3] but the dataset has "
        "10 classes (dataset.num_classes=10)" in done.stderr
    )
    assert run_folders(tmp_path) == []


def test_resume_of_a_folder_that_is_no_run_says_so(tmp_path):
    done = run_cli("resume", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "no config.yaml here" in done.stderr


def test_a_diverging_run_exits_3_with_status_diverged(tmp_path, data_dir):
    overrides = ["optimizer=sgd", "optimizer.lr=1e6", "loss=mse", *TINY]
    done = run_cli("train", *cli_args(tmp_path, data_dir, *overrides), cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert (
        "error: train/loss is" in done.stderr and "the last good checkpoint is kept" in done.stderr
    )
    (run_dir,) = run_folders(tmp_path)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "diverged"


def test_version_names_trainlab_torch_cuda_and_python(tmp_path):
    import platform
    from importlib.metadata import version

    import torch

    import trainlab

    done = run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip()
    assert out.startswith(f"trainlab {trainlab.__version__} (torch {torch.__version__}, CUDA ")
    assert out.endswith(f"Python {platform.python_version()})")
    assert trainlab.__version__ == version("trainlab")  # the package's version, not a stale copy
