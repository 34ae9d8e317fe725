"""Own data without bookkeeping: csv and image_folder read input_shape, num_features,
num_classes and num_outputs from the data (a pinned value that differs is one error naming
both), and csv's `standardize` uses the train split's statistics, stored in the run and
applied by eval and predict from any folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import files
from trainlab import cli, dataspec, rundir, train
from trainlab.data import build_data, validation_indices
from trainlab.datasets import csv_table
from trainlab.errors import ConfigError, DataError

CPU = torch.device("cpu")
CSV = ["dataset=csv", "model=mlp", "model.hidden_sizes=[16]", "trainer.batch_size=16"]


def test_csv_shapes_and_classes_come_from_the_table(make_cfg):
    cfg = make_cfg(*CSV)
    assert cfg.dataset.input_shape is None and cfg.dataset.num_classes is None
    data = build_data(cfg.dataset, CPU)
    # The table: four feature columns and a score column (features: null = all but the
    # target), three class names.
    assert list(cfg.dataset.input_shape) == [5] and cfg.dataset.num_features == 5
    assert cfg.dataset.num_classes == 3 and cfg.dataset.num_outputs == 3
    assert data.classes == ["setosa", "versicolor", "virginica"]
    regression = make_cfg(*CSV, "dataset.task=regression", "dataset.target=score",
                          "dataset.features=[f1,f2]")  # fmt: skip
    build_data(regression.dataset, CPU)
    assert list(regression.dataset.input_shape) == [2] and regression.dataset.num_outputs == 1
    assert regression.dataset.num_classes is None  # (a regression target has no classes)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.num_classes=4", "dataset.num_classes=4: the data has 3 classes (setosa, "
         "versicolor, virginica); set dataset.num_classes=3, or null to read it from the data"),
        ("dataset.input_shape=[4]", "dataset.input_shape=[4]: the train samples have shape [5]; "
         "set dataset.input_shape=[5], or null"),
        ("dataset.num_features=7", "dataset.num_features=7: samples of shape [5] have 5 "
         "elements; set dataset.num_features=5, or null"),
    ],
)  # fmt: skip
def test_a_pinned_shape_that_differs_from_the_table_names_both(override, message, make_cfg):
    with pytest.raises(DataError) as e:
        build_data(make_cfg(*CSV, override).dataset, CPU)
    assert str(e.value).startswith(message)


def test_image_folder_shapes_and_classes_come_from_the_images(make_cfg):
    cfg = make_cfg("dataset=image_folder", "model=cnn", "dataset.num_workers=0")
    data = build_data(cfg.dataset, CPU)
    assert list(cfg.dataset.input_shape) == [3, 32, 32] and cfg.dataset.num_features == 3072
    assert cfg.dataset.num_classes == 2 == cfg.dataset.num_outputs
    assert data.classes == ["cats", "dogs"]
    with pytest.raises(DataError, match=r"num_classes=5: the data has 2 classes \(cats, dogs\)"):
        build_data(make_cfg("dataset=image_folder", "dataset.num_classes=5").dataset, CPU)
    shape = "dataset.input_shape=[3,28,28]"
    with pytest.raises(DataError, match=r"shape \[3, 32, 32\] after the transforms; set "):
        build_data(make_cfg("dataset=image_folder", shape).dataset, CPU)
    with pytest.raises(ConfigError, match=r"dataset\.standardize=true: .* normalise there"):
        build_data(make_cfg("dataset=image_folder", "+dataset.standardize=true").dataset, CPU)


def test_standardize_uses_the_train_splits_statistics_only(make_cfg, data_dir):
    cfg = make_cfg(*CSV, "dataset.features=[f1,f2,f3,f4]", "dataset.standardize=true")
    data = build_data(cfg.dataset, CPU)
    # The statistics are those of the train rows left after validation is held out.
    raw = csv_table(str(data_dir / "table.csv"), "label", ["f1", "f2", "f3", "f4"],
                    "classification", None, 0.2, 0)  # fmt: skip
    x = torch.as_tensor(raw["x_train"])
    train_idx, _ = validation_indices(len(x), cfg.dataset.val_fraction, cfg.dataset.split_seed)
    want = dataspec.feature_stats(x[train_idx])
    assert data.standardize == want
    assert want != dataspec.feature_stats(x)  # (the whole table's would differ)
    torch.testing.assert_close(data.train.x.double().mean(0), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(data.train.x.double().std(0, unbiased=False),
                               torch.ones(4, dtype=torch.float64))  # fmt: skip
    # Validation and test go through the same map, not their own.
    mean = torch.tensor(want["mean"], dtype=torch.float64)
    std = torch.tensor(want["std"], dtype=torch.float64)
    test_x = torch.as_tensor(raw["x_test"]).double()
    torch.testing.assert_close(data.test.x, ((test_x - mean) / std).float())
    assert data.test.x.double().mean(0).abs().max() > 1e-3
    # Given stored statistics, build_data applies them as they are.
    other = {"mean": [0.0] * 4, "std": [2.0] * 4}
    again = build_data(make_cfg(*CSV, "dataset.features=[f1,f2,f3,f4]",
                                "dataset.standardize=true").dataset, CPU, other)  # fmt: skip
    torch.testing.assert_close(again.test.x, (test_x / 2).float())
    assert again.standardize == other


def test_a_standardized_csv_run_evals_and_predicts_the_same_from_any_folder(
    make_cfg, tmp_path, monkeypatch, capsys
):
    table = tmp_path / "a" / "table.csv"
    table.parent.mkdir()
    files.write_csv(table, rows=90, seed=3)
    files.write_csv(table.parent / "test.csv", rows=30, seed=4)
    monkeypatch.chdir(table.parent)
    args = ["train", *CSV, "dataset.path=table.csv", "dataset.test_path=test.csv",
            "dataset.standardize=true", "trainer.max_epochs=2", "trainer.num_threads=1",
            "paths.output_dir=out"]  # fmt: skip
    assert cli.main(args) == 0
    (run,) = (table.parent / "out" / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())["data"]
    assert len(record["standardize"]["mean"]) == 5 and record["classes"][0] == "setosa"
    stored = (run / "config.yaml").read_text()
    assert f"path: {table}\n" in stored and "num_features: 5\n" in stored
    trained_test = json.loads((run / "metrics.json").read_text())["test"]
    # From another folder, with the training table changed since (its statistics would now
    # be others): the stored absolute paths and statistics give the run's test numbers.
    before = table.read_text()
    files.write_csv(table, rows=90, seed=5)
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["eval", str(run)]) == 0
    evaluated = json.loads((run / "eval" / "test-best.json").read_text())["metrics"]
    assert evaluated["test/acc"] == trained_test["test/acc"]
    assert evaluated["test/loss"] == pytest.approx(trained_test["test/loss"], rel=1e-6)
    table.write_text(before)
    assert cli.main(["predict", str(run), "--input", str(table), "--output", "p1.csv"]) == 0
    monkeypatch.chdir(table.parent)
    assert cli.main(["predict", str(run), "--input", "table.csv", "--output", "p2.csv"]) == 0
    first = (elsewhere / "p1.csv").read_text()
    assert first == (table.parent / "p2.csv").read_text() and first.count("\n") == 91
    # Predictions without the statistics would be other numbers: they are applied.
    data = json.loads((run / "run.json").read_text())
    data["data"]["standardize"] = {"mean": [0.0] * 5, "std": [1.0] * 5}
    (run / "run.json").write_text(json.dumps(data))
    assert cli.main(["predict", str(run), "--input", "table.csv", "--output", "p3.csv"]) == 0
    assert (table.parent / "p3.csv").read_text() != first
    capsys.readouterr()


@pytest.mark.parametrize(
    "stats",
    [{"mean": [0.0] * 5}, {"mean": [0.0] * 5, "std": [0.0] * 5}, {"mean": "x", "std": 3},
     {"mean": [0.0] * 3, "std": [1.0] * 3}],
)  # fmt: skip
def test_hostile_stored_statistics_are_one_line(stats, make_cfg, tmp_path, capsys):
    cfg = make_cfg(*CSV, "dataset.features=[f1,f2,f3,f4,score]", "dataset.standardize=true")
    run = rundir.claim(tmp_path / "run")
    train.run(cfg, run, launch=None)
    record = json.loads((run / "run.json").read_text())
    record["data"]["standardize"] = stats
    (run / "run.json").write_text(json.dumps(record))
    table = Path(cfg.dataset.path)
    assert cli.main(["predict", str(run), "--input", str(table)]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --input {table}: ") and len(err.splitlines()) == 1
    assert "standardize statistics" in err


def test_an_export_of_a_standardized_run_takes_raw_inputs(make_cfg, tmp_path, capsys):
    """safetensors (through load_model) and TorchScript give the run's own outputs for raw
    inputs: the statistics travel with the export, as predict applies them."""
    from trainlab import export, train
    from trainlab.evaluation import rebuild

    cfg = make_cfg(*CSV, "dataset.features=[f1,f2,f3,f4,score]", "dataset.standardize=true")
    run = rundir.claim(tmp_path / "run")
    train.run(cfg, run, launch=None)
    rebuilt = rebuild(run, "best")
    raw = torch.randn(7, 5) * 3 + 1
    stats = rebuilt.data["standardize"]
    with torch.no_grad():
        want = rebuilt.model(dataspec.standardized(raw, stats, "test"))
        assert not torch.allclose(rebuilt.model(raw), want)  # (the statistics matter here)
        assert cli.main(["export", str(run)]) == 0
        folder = run / "export"
        loaded = export.load_model(folder / "config.yaml", folder / "model.safetensors")
        torch.testing.assert_close(loaded(raw), want, rtol=0, atol=0)
        assert cli.main(["export", str(run), "--format", "torchscript"]) == 0
        scripted = torch.jit.load(str(folder / "model.torchscript.pt"))
        torch.testing.assert_close(scripted(raw), want, rtol=0, atol=0)
    # An export whose statistics were tampered with is refused, naming the file.
    tampered = OmegaConf.load(folder / "config.yaml")
    tampered.standardize_stats.std = [0.0] * 5
    OmegaConf.save(tampered, folder / "config.yaml")
    with pytest.raises(DataError, match="standardize_stats: the run's standardize statistics"):
        export.load_model(folder / "config.yaml", folder / "model.safetensors")
    capsys.readouterr()


def test_the_same_command_again_continues_a_run_whose_shapes_came_from_the_data(
    make_cfg, data_dir, tmp_path, monkeypatch, capsys
):
    """trainer.resume=auto: the new launch's null shape keys mean what the stored run read
    (dataspec.from_the_run), so the second run of the command continues instead of being
    refused as a change of dataset.num_classes and the model's sizes."""
    monkeypatch.chdir(tmp_path)
    args = ["train", *CSV, f"hydra.run.dir={tmp_path / 'run'}", "trainer.resume=auto",
            f"paths.data_dir={data_dir}", "trainer.num_threads=1"]  # fmt: skip
    assert cli.main([*args, "trainer.max_epochs=1"]) == 0
    assert cli.main([*args, "trainer.max_epochs=2"]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "resumed_from" in record["attempts"][-1]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 2
