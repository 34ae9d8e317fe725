"""File-based and generated datasets: read from files the tests write, clear errors offline,
and the DataLoader path's seeded augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from trainlab import checkpoint_files, rundir, synthetic, train
from trainlab.data import LoaderBatches, build_data
from trainlab.datasets import cifar10, csv_table, mnist
from trainlab.errors import DataError

CPU = torch.device("cpu")


def test_mnist_reads_the_idx_files_under_root(data_dir):
    arrays = mnist(str(data_dir), download=False, mean=0.0, std=1.0)
    assert arrays["x_train"].shape == (120, 1, 28, 28) and arrays["x_test"].shape == (40, 1, 28, 28)
    assert arrays["x_train"].max() == pytest.approx(1.0)
    assert set(arrays["y_train"].tolist()) == set(range(10))
    fashion = mnist(str(data_dir), download=False, mean=0.0, std=1.0, variant="FashionMNIST")
    assert fashion["x_train"].shape == (120, 1, 28, 28)


def test_mnist_offline_without_files_says_where_to_put_them(tmp_path):
    with pytest.raises(DataError) as info:
        mnist(str(tmp_path), download=False, mean=0.1307, std=0.3081)
    message = str(info.value)
    assert f"no MNIST files in {tmp_path / 'MNIST' / 'raw'}" in message
    assert "train-images-idx3-ubyte" in message and "dataset.download=true" in message


def test_a_run_on_missing_files_stops_before_training_and_leaves_no_folder(make_cfg, tmp_path):
    cfg = make_cfg("dataset=cifar10", f"dataset.root={tmp_path / 'empty'}", "model=cnn")
    run_dir = rundir.claim(tmp_path / "run")
    with pytest.raises(DataError, match=r"no CIFAR-10 files in .*cifar-10-batches-py"):
        train.run(cfg, run_dir, launch=None)
    assert not run_dir.exists()


def test_cifar_reads_the_python_batches(data_dir):
    arrays = cifar10(str(data_dir), download=False, mean=[0.5] * 3, std=[0.5] * 3)
    assert arrays["x_train"].shape == (100, 3, 32, 32) and arrays["x_test"].shape == (20, 3, 32, 32)
    assert arrays["x_train"].min() >= -1.0 and arrays["x_train"].max() <= 1.0


class RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_cifar_batch_with_code_in_it_is_refused(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": RunsCode(), "labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"print is not allowed in a CIFAR batch"):
        cifar10(str(tmp_path), download=False, mean=[0.5] * 3, std=[0.5] * 3)
    assert "pwned" not in capsys.readouterr().out


def test_csv_classes_and_regression_targets(data_dir):
    path = str(data_dir / "table.csv")
    arrays = csv_table(path, "label", ["f1", "f2", "f3", "f4"], "classification", None, 0.2, 0)
    assert arrays["x_train"].shape == (72, 4) and arrays["x_test"].shape == (18, 4)
    assert set(arrays["y_train"].tolist()) == {0, 1, 2}  # setosa, versicolor, virginica, sorted
    reg = csv_table(path, "score", ["f1", "f2", "f3", "f4"], "regression", None, 0.2, 0)
    assert reg["y_train"].shape == (72, 1) and reg["y_train"].dtype == np.float32


def test_csv_errors_name_the_column(data_dir, tmp_path):
    path = str(data_dir / "table.csv")
    with pytest.raises(DataError, match="column 'f9' is not in"):
        csv_table(path, "label", ["f1", "f9"], "classification", None, 0.2, 0)
    with pytest.raises(DataError, match="column 'label' is 'setosa', not a number"):
        csv_table(path, "score", ["f1", "label"], "regression", None, 0.2, 0)
    with pytest.raises(DataError, match=r"dataset\.path=.*nope\.csv: no such file"):
        csv_table(str(tmp_path / "nope.csv"), "label", None, "classification", None, 0.2, 0)


def test_a_csv_regression_run(make_cfg, tmp_path):
    cfg = make_cfg(
        "dataset=csv", "dataset.target=score", "dataset.task=regression", "dataset.num_outputs=1",
        "dataset.features=[f1,f2,f3,f4]", "dataset.monitor=val/rmse", "model=mlp", "loss=mse",
    )  # fmt: skip
    results = train.run(cfg, rundir.claim(tmp_path / "run"), launch=None)
    assert {"test/rmse", "test/mae"} <= set(results["test"])


def test_synthetic_data_depends_on_its_own_seed_only():
    a = synthetic.synthetic_regression(50, 10, 4, 2, 0.1, seed=3)
    b = synthetic.synthetic_regression(50, 10, 4, 2, 0.1, seed=3)
    c = synthetic.synthetic_regression(50, 10, 4, 2, 0.1, seed=4)
    np.testing.assert_array_equal(a["x_train"], b["x_train"])
    assert not np.array_equal(a["x_train"], c["x_train"])
    seg = synthetic.synthetic_segmentation(6, 2, 16, 0.1, seed=0)
    assert seg["x_train"].shape == (6, 1, 16, 16) and set(np.unique(seg["y_train"])) == {0, 1, 2}
    multi = synthetic.synthetic_multilabel(100, 10, 8, 5, 0.1, -1.0, seed=0)
    assert set(np.unique(multi["y_train"])) == {-1.0, 1.0}


def test_image_folder_uses_the_dataloader_path_and_checks_classes(make_cfg):
    cfg = make_cfg("dataset=image_folder", "model=cnn")
    data = build_data(cfg.dataset, CPU)
    assert len(data.train) + len(data.val) + len(data.test) == 30
    batches = LoaderBatches(data.train, 4, True, 0, CPU, num_workers=0)
    x, y = next(batches.epoch(0))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.long
    with pytest.raises(DataError, match=r"dataset\.num_classes=3: the data has 2 classes"):
        build_data(make_cfg("dataset=image_folder", "dataset.num_classes=3").dataset, CPU)
    with pytest.raises(DataError, match=r"dataset\.train_dir=.*nowhere"):
        build_data(make_cfg("dataset=image_folder", "dataset.train_dir=/nowhere").dataset, CPU)


def test_augmentation_is_seeded_per_sample_whatever_the_workers(make_cfg):
    """A random crop draws from (seed, epoch, index): 0 or 2 workers, from the start or from
    batch 2, the same batches come out."""
    crop_node = "{_target_:torchvision.transforms.RandomResizedCrop,size:[12,12]}"
    crop = f"+dataset.train_transforms=[{crop_node}]"
    cfg = make_cfg("dataset=image_folder", "~dataset.train_transforms", crop)
    data = build_data(cfg.dataset, CPU)
    serial = list(LoaderBatches(data.train, 4, True, 7, CPU, num_workers=0).epoch(1))
    parallel = list(LoaderBatches(data.train, 4, True, 7, CPU, num_workers=2).epoch(1))
    resumed = list(LoaderBatches(data.train, 4, True, 7, CPU, num_workers=2).epoch(1, start=2))
    for (xa, ya), (xb, yb) in zip(serial, parallel, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(serial[2:], resumed, strict=True))
    other_epoch = list(LoaderBatches(data.train, 4, True, 7, CPU, num_workers=0).epoch(2))
    assert not torch.equal(serial[0][0], other_epoch[0][0])


def test_loading_never_draws_from_the_global_generator(make_cfg):
    data = build_data(make_cfg("dataset=image_folder").dataset, CPU)
    before = torch.get_rng_state()
    for workers in (0, 2):
        list(LoaderBatches(data.train, 4, True, 7, CPU, num_workers=workers).epoch(0))
    assert torch.equal(torch.get_rng_state(), before)


def test_an_image_folder_run_with_workers_equals_one_without(make_cfg, tmp_path):
    common = ["dataset=image_folder", "model=cnn", "trainer.batch_size=8", "trainer.max_epochs=2"]
    weights = []
    for workers in (0, 2):
        cfg = make_cfg(*common, f"dataset.num_workers={workers}")
        run_dir = rundir.claim(tmp_path / f"w{workers}")
        train.run(cfg, run_dir, launch=None)
        weights.append(checkpoint_files.load(run_dir / "checkpoints" / "last.pt")["model"])
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
