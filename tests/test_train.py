"""A whole run in-process: the files it writes, TensorBoard content, resume, rejection."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from runs import saved_history
from trainlab import rundir, train
from trainlab.errors import ConfigError, DataError, Diverged

LAUNCH = {"overrides": ["optimizer.lr=0.01"], "choices": {"model": "cnn1d", "optimizer": "adam"}}


def start(cfg, tmp_path: Path, name: str = "run") -> Path:
    run_dir = rundir.claim(tmp_path / "runs" / name)
    return run_dir


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_a_run_writes_every_output(make_cfg, tmp_path):
    cfg = make_cfg()
    run_dir = start(cfg, tmp_path)
    results = train.run(cfg, run_dir, launch=LAUNCH)

    assert {p.name for p in run_dir.iterdir()} >= {
        "config.yaml", "run.json", "train.log", "tb", "checkpoints", "metrics.json", "status.json",
    }  # fmt: skip
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored == OmegaConf.to_container(cfg, resolve=True)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["seed"] == cfg.seed and record["overrides"] == LAUNCH["overrides"]
    assert record["versions"]["torch"] == importlib.metadata.version("torch")
    assert record["environment"]["torch"] == str(torch.__version__)
    assert {"started", "argv", "host"} <= set(record["attempts"][0])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["epochs"] == 2 and 0.0 <= saved["test"]["test/acc"] <= 1.0
    assert saved["best"]["val/acc"] == max(
        r["val/acc"] for r in saved_history(run_dir / "checkpoints/last.pt")
    )
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best.pt", "last.pt", "manifest.json", "step_36.pt", "step_72.pt",
    ]  # fmt: skip
    log_text = (run_dir / "train.log").read_text()
    assert "epoch 1/2" in log_text and "epoch 2/2" in log_text and "test/acc" in log_text


def test_tensorboard_gets_the_promised_tags_config_and_hparams(make_cfg, tmp_path):
    cfg = make_cfg()
    run_dir = start(cfg, tmp_path)
    results = train.run(cfg, run_dir, launch=LAUNCH)

    # One event stream, in tb/ itself (add_hparams would have made a timestamped sub-folder).
    assert [p.is_file() for p in (run_dir / "tb").iterdir()] == [True]
    acc = events(run_dir)
    scalars = set(acc.Tags()["scalars"])
    assert scalars >= {
        "train/loss", "train/acc", "val/loss", "val/acc", "lr/group0",
        "time/epoch_s", "time/samples_per_s", "best/val/acc", "test/acc", "test/loss",
    }  # fmt: skip
    assert [e.step for e in acc.Scalars("val/acc")] == [36, 72]
    assert acc.Scalars("test/acc")[0].value == pytest.approx(results["test"]["test/acc"])
    assert "config/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "max_epochs: 2" in text

    content = acc.PluginTagToContent("hparams")
    start_info = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    hparams = {k: v.ListFields()[0][1] for k, v in start_info.hparams.items()}
    assert hparams["optimizer.lr"] == pytest.approx(0.01)  # the overridden key
    assert hparams["model"] == "cnn1d" and hparams["seed"] == 0
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"best/val/acc", "test/acc"}


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("dataset.num_classes=5", DataError, "dataset.num_classes=5: the train labels run"),
        ("+optimizer.momentum=0.9", ConfigError, "optimizer.momentum: unknown key; .*Adam takes"),
        ("model.channels=0", ConfigError, "model=trainlab.models.ConvBase: fails on samples"),
        (
            "model.num_outputs=5",
            ConfigError,
            r"model.num_outputs=5: the model gives outputs of shape \[2, 5\] but the dataset",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_a_rejected_run_leaves_no_folder(make_cfg, tmp_path, override, error, message):
    cfg = make_cfg(override)
    run_dir = start(cfg, tmp_path)
    with pytest.raises(error, match=message):
        train.run(cfg, run_dir, launch=LAUNCH)
    assert not run_dir.exists()
    assert not (tmp_path / "runs").exists()  # the emptied parent goes too


def test_a_rejected_run_keeps_folders_it_did_not_make(make_cfg, tmp_path):
    (tmp_path / "mine").mkdir()  # the user's own, empty: not ours to remove
    run_dir = rundir.claim(tmp_path / "mine" / "runs" / "run")
    with pytest.raises(DataError):
        train.run(make_cfg("dataset.num_classes=5"), run_dir, launch=LAUNCH)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]
    assert not any((tmp_path / "mine").iterdir())


def test_early_stopping_stops_after_patience_validations(make_cfg, tmp_path):
    # val/loss falls every epoch here, so with mode=max only the first validation is "best".
    cfg = make_cfg(
        "trainer.max_epochs=20", "trainer.monitor=val/loss", "trainer.mode=max",
        "trainer.early_stopping.patience=2",
    )  # fmt: skip
    results = train.run(cfg, start(cfg, tmp_path), launch=LAUNCH)
    assert results["stopped_early"] and results["epochs"] == 3
    assert results["best"]["epoch"] == 1


def test_max_steps_wins_over_max_epochs(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_epochs=100", "trainer.max_steps=50")
    run_dir = start(cfg, tmp_path)
    results = train.run(cfg, run_dir, launch=LAUNCH)
    assert results["steps"] == 50 and results["epochs"] == 1  # 36 steps per epoch
    assert results["final"]["step"] == 50  # validated at the last step, mid-epoch


def test_a_diverging_run_stops_with_status_diverged(make_cfg, tmp_path):
    cfg = make_cfg("optimizer=sgd", "optimizer.lr=1e6", "loss=mse")
    run_dir = start(cfg, tmp_path)
    with pytest.raises(
        Diverged, match=r"train/loss is (nan|inf) at step \d+ \(epoch 1, batch \d+\)"
    ):
        train.run(cfg, run_dir, launch=LAUNCH)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "diverged" and "optimizer.lr" in status["reason"]
