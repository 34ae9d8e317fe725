"""Each task's metrics, against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from trainlab import tasks
from trainlab.tasks import Task

CPU = torch.device("cpu")


def measure(task: Task, output, y, loss=0.5):
    sums = tasks.new_sums(task, CPU)
    tasks.accumulate(task, sums, torch.tensor(loss), output, y)
    return tasks.summarize(task, sums, "val")


def test_classification_accuracy_skips_ignored_labels():
    out = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, -100, 1])  # right, wrong, ignored, right
    assert measure(Task("classification", 2, ignored_labels=True), out, y)[
        "val/acc"
    ] == pytest.approx(2 / 3)


def test_binary_accuracy_reads_logit_signs_for_both_label_conventions():
    out = torch.tensor([[1.0], [-1.0], [2.0]])
    assert measure(Task("binary", 1), out, torch.tensor([[1.0], [0.0], [0.0]]))[
        "val/acc"
    ] == pytest.approx(2 / 3)
    assert measure(Task("binary", 1), out, torch.tensor([[1.0], [-1.0], [-1.0]]))[
        "val/acc"
    ] == pytest.approx(2 / 3)


def test_regression_rmse_and_mae():
    out, y = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    m = measure(Task("regression", 2), out, y)  # errors 0, 2, 3, 0
    assert m["val/rmse"] == pytest.approx((13 / 4) ** 0.5) and m["val/mae"] == pytest.approx(5 / 4)
    assert m["val/loss"] == pytest.approx(0.5)


def test_multilabel_f1_per_label_and_macro():
    out = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, -1.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    m = measure(Task("multilabel", 3), out, y)
    # label 0: tp 2, fn 1 -> 4/5; label 1: fp 1 -> 0; label 2: fp 1 -> 0
    assert m["val/f1_0"] == pytest.approx(0.8) and m["val/f1_1"] == 0.0 and m["val/f1_2"] == 0.0
    assert m["val/f1"] == pytest.approx(0.8 / 3)


def test_segmentation_dice_and_iou_over_foreground_classes():
    y = torch.tensor([[[0, 1, 1, 2]]])
    pred = torch.tensor([[[0, 1, 2, 2]]])
    out = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    m = measure(Task("segmentation", 3, num_classes=3), out, y)
    # class 1: inter 1, pred 1, true 2 -> dice 2/3, iou 1/2; class 2 (pred 2, true 1): the same
    assert m["val/dice"] == pytest.approx(2 / 3) and m["val/iou"] == pytest.approx(0.5)
    binary = measure(
        Task("segmentation", 1, num_classes=2),
        torch.tensor([[[[3.0, -3.0]]]]),
        torch.tensor([[[1, 1]]]),
    )
    assert binary["val/dice"] == pytest.approx(2 / 3) and binary["val/iou"] == pytest.approx(0.5)


def test_multitask_reports_each_heads_metrics():
    task = Task(
        "multitask", 0, heads={"label": Task("classification", 2), "value": Task("regression", 1)}
    )
    out = {"label": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "value": torch.tensor([[1.0], [3.0]])}
    y = {"label": torch.tensor([0, 1]), "value": torch.tensor([[1.0], [1.0]])}
    m = measure(task, out, y)
    assert m["val/label_acc"] == 0.5 and m["val/value_mae"] == 1.0 and m["val/loss"] == 0.5


def test_sums_average_over_batches_by_size():
    task = Task("classification", 2)
    sums = tasks.new_sums(task, CPU)
    tasks.accumulate(
        task, sums, torch.tensor(1.0), torch.tensor([[1.0, 0.0]] * 3), torch.tensor([0, 0, 0])
    )
    tasks.accumulate(task, sums, torch.tensor(3.0), torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    m = tasks.summarize(task, sums, "train")
    assert m["train/loss"] == pytest.approx((3 * 1.0 + 1 * 3.0) / 4) and m["train/acc"] == 0.75
