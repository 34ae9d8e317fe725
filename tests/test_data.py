"""Datasets, the seeded validation split, and per-epoch batch order."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainlab.data import Split, TensorBatches, build_data, validation_indices
from trainlab.datasets import digits
from trainlab.errors import DataError
from trainlab.synthetic import mnist1d


def test_mnist1d_has_the_papers_shape_and_is_cached(data_dir):
    arrays = mnist1d(str(data_dir), 5000, 0.8, 40, False, 42)
    assert arrays["x_train"].shape == (4000, 40) and arrays["x_test"].shape == (1000, 40)
    assert set(np.unique(arrays["y_train"])) == set(range(10))
    files = list((data_dir / "mnist1d").glob("*.npz"))
    assert len(files) == 1
    again = mnist1d(str(data_dir), 5000, 0.8, 40, False, 42)
    np.testing.assert_array_equal(arrays["x_train"], again["x_train"])


def test_mnist1d_generation_leaves_the_global_generators_alone(tmp_path):
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    mnist1d(str(tmp_path), 200, 0.8, 40, False, 7)  # a cache miss: generates
    assert (tmp_path / "mnist1d").is_dir()
    assert random.getstate() == before[0]
    np.testing.assert_array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])


def test_validation_split_is_seeded_and_independent_of_the_run_seed(make_cfg):
    a = build_data(make_cfg("seed=1").dataset, torch.device("cpu"))
    b = build_data(make_cfg("seed=2").dataset, torch.device("cpu"))
    c = build_data(make_cfg("dataset.split_seed=5").dataset, torch.device("cpu"))
    assert torch.equal(a.val.x, b.val.x)  # the run seed does not move the split
    assert not torch.equal(a.val.x, c.val.x)  # the split seed does
    assert len(a.val) == 400 and len(a.train) == 3600 and len(a.test) == 1000


def test_split_is_a_partition():
    train, val = validation_indices(50, 0.2, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert sorted(torch.cat([train, val]).tolist()) == list(range(50))
    with pytest.raises(DataError, match=r"dataset\.val_fraction=0\.001"):
        validation_indices(50, 0.001, seed=0)


def test_epoch_order_depends_on_seed_and_epoch_only():
    split = Split(torch.arange(10.0)[:, None], torch.arange(10))
    batches = TensorBatches(split, batch_size=3, shuffle=True, seed=4)
    assert len(batches) == 4
    assert torch.equal(batches.order(2), TensorBatches(split, 3, True, seed=4).order(2))
    assert not torch.equal(batches.order(2), batches.order(3))
    assert not torch.equal(batches.order(2), TensorBatches(split, 3, True, seed=5).order(2))
    whole = [y for _, y in batches.epoch(2)]
    assert sorted(torch.cat(whole).tolist()) == list(range(10))
    # Starting mid-epoch yields exactly the remaining batches of the same order.
    rest = [y for _, y in batches.epoch(2, start=2)]
    assert all(torch.equal(a, b) for a, b in zip(whole[2:], rest, strict=True))
    assert torch.equal(TensorBatches(split, 3, False, 4).order(9), torch.arange(10))


def test_digits_is_bundled_scaled_and_held_out():
    arrays = digits(test_fraction=0.2, test_split_seed=0)
    assert arrays["x_train"].shape[1:] == (1, 8, 8)
    assert len(arrays["y_test"]) == round(1797 * 0.2)
    assert arrays["x_train"].min() >= 0.0 and arrays["x_train"].max() <= 1.0


def test_declared_shape_and_classes_are_checked_against_the_data(make_cfg):
    with pytest.raises(
        DataError, match=r"dataset.input_shape=\[1, 8, 8\]: .*set dataset.input_shape=\[40\]"
    ):
        build_data(make_cfg("dataset.input_shape=[1,8,8]").dataset, torch.device("cpu"))
    with pytest.raises(DataError, match=r"dataset\.num_classes=5: .* set dataset\.num_classes=10"):
        build_data(make_cfg("dataset.num_classes=5").dataset, torch.device("cpu"))
