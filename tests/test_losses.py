"""Custom losses are correct (gradcheck, hand-computed values) and mismatches fail early,
naming the key."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.nn import functional as F

from trainlab import config, rundir, train
from trainlab.build import build_loss
from trainlab.data import build_data
from trainlab.errors import ConfigError, DataError
from trainlab.losses import DiceLoss, LogCoshLoss, MSELoss, MultiTaskLoss, _LogCosh


def f64(*shape, requires_grad=True):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=requires_grad)


def test_log_cosh_backward_passes_gradcheck():
    x, y = f64(4, 3), f64(4, 3)
    assert gradcheck(_LogCosh.apply, (x, y))
    # Large errors neither overflow nor lose the gradient's sign.
    big = torch.tensor([300.0, -300.0], dtype=torch.float64, requires_grad=True)
    loss = LogCoshLoss()(big, torch.zeros(2, dtype=torch.float64))
    loss.backward()
    assert torch.isfinite(loss) and torch.allclose(
        big.grad, torch.tensor([0.5, -0.5], dtype=torch.float64)
    )


def test_log_cosh_value_is_log_of_cosh():
    x, y = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = torch.log(torch.cosh(x - y)).mean()
    assert torch.allclose(LogCoshLoss()(x, y), expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_dice_passes_gradcheck(channels):
    torch.manual_seed(0)
    logits = f64(2, channels, 4, 4)
    target = torch.randint(0, max(channels, 2), (2, 4, 4))
    loss = DiceLoss(eps=1.0, include_background=True)
    assert gradcheck(lambda t: loss(t, target), (logits,))


def test_multi_task_and_one_hot_mse_pass_gradcheck():
    loss = MultiTaskLoss(
        {"label": torch.nn.CrossEntropyLoss(), "value": MSELoss()}, {"label": 1.0, "value": 0.5}
    )
    label, value = f64(5, 3), f64(5, 1)
    targets = {"label": torch.tensor([0, 1, 2, 1, 0]), "value": f64(5, 1, requires_grad=False)}
    assert gradcheck(lambda a, b: loss({"label": a, "value": b}, targets), (label, value))
    assert gradcheck(lambda a: MSELoss()(a, torch.tensor([0, 2, 1])), (f64(3, 3),))


def test_dice_matches_hand_computed_values():
    # Binary: logits 0 -> p = 0.5 everywhere; mask has 2 of 4 pixels on.
    # intersection 1.0, sum p 2.0, sum mask 2; dice (2*1 + 1)/(2 + 2 + 1) = 0.6 -> loss 0.4.
    binary = DiceLoss(eps=1.0, include_background=True)
    mask = torch.tensor([[[1, 0], [1, 0]]])
    assert binary(torch.zeros(1, 1, 2, 2), mask).item() == pytest.approx(0.4)
    # Multi-class, confident logits: class 0 predicted on pixel 0 (true 0), class 1 on pixels
    # 1-3 (true 1, 1, 0). Per class with eps 0: class 0: 2*1/(1+2) = 2/3; class 1: 2*2/(3+2) = 0.8.
    logits = torch.full((1, 2, 1, 4), -50.0)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1:] = 50.0
    target = torch.tensor([[[0, 1, 1, 0]]])
    both = DiceLoss(eps=0.0, include_background=True)(logits, target)
    assert both.item() == pytest.approx(1 - (2 / 3 + 0.8) / 2, abs=1e-6)
    foreground = DiceLoss(eps=0.0, include_background=False)(logits, target)
    assert foreground.item() == pytest.approx(1 - 0.8, abs=1e-6)


def test_hinge_matches_hand_computed_value(make_cfg):
    # The loss trainlab builds from loss=multi_margin (its YAML, its builder), by hand:
    # sum over i != y of max(0, margin - x[y] + x[i]) / C
    # = ((1 - 0.8 + 0.1) + (1 - 0.8 + 0.2) + (1 - 0.8 + 0.4)) / 4 = 0.325
    scores, target = torch.tensor([[0.1, 0.2, 0.4, 0.8]]), torch.tensor([3])
    hinge = build_loss(make_cfg("loss=multi_margin").loss)
    assert hinge(scores, target).item() == pytest.approx(0.325)
    # p = 2: squared terms, (0.09 + 0.16 + 0.36) / 4
    squared = build_loss(make_cfg("loss=multi_margin", "loss.p=2").loss)
    assert squared(scores, target).item() == pytest.approx(0.1525)


@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_option_matches_torch_kl_div_batchmean(make_cfg, log_target):
    """The shipped option is the KL divergence per sample, averaged over the batch: torch's
    F.kl_div with reduction=batchmean, and the sum p (log p - log q) / N by hand."""
    flag = str(log_target).lower()
    cfg = make_cfg("experiment=soft_labels_kl", f"loss.log_target={flag}")
    loss = build_loss(cfg.loss)
    torch.manual_seed(0)
    log_q = torch.randn(6, 5, dtype=torch.float64).log_softmax(1)
    p = torch.randn(6, 5, dtype=torch.float64).softmax(1)
    target = p.log() if log_target else p
    value = loss(log_q, target)
    expected = F.kl_div(log_q, target, reduction="batchmean", log_target=log_target)
    assert torch.equal(value, expected)
    assert value.item() == pytest.approx((p * (p.log() - log_q)).sum().item() / 6)


def test_binary_hinge_matches_the_formula_and_torch_multi_margin(make_cfg):
    """max(0, 1 - y f) on +-1 targets; with two class scores (0, f) torch's multi-class hinge
    is the same up to its 1/C, so 2 * F.multi_margin_loss must agree."""
    loss = build_loss(make_cfg("experiment=binary_hinge").loss)
    f = torch.tensor([[2.0], [0.3], [-0.5], [-2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [1.0], [1.0], [-1.0]], dtype=torch.float64)
    value = loss(f, y)
    assert value.item() == pytest.approx((0.0 + 0.7 + 1.5 + 0.0) / 4)
    scores = torch.cat([torch.zeros_like(f), f], 1)
    classes = (y[:, 0] > 0).long()
    assert torch.allclose(value, 2 * F.multi_margin_loss(scores, classes))
    squared = build_loss(make_cfg("experiment=binary_hinge", "loss.squared=true").loss)
    assert squared(f, y).item() == pytest.approx((0.49 + 2.25) / 4)


def test_soft_label_and_hinge_experiments_train_to_their_numbers(make_cfg, tmp_path):
    """Both synthetic tasks learn in a few epochs (the documented numbers need the full
    length): KL well under a uniform guess's, hinge accuracy well above chance."""
    kl = make_cfg("experiment=soft_labels_kl", "trainer.max_epochs=5")
    run = train.run(kl, rundir.claim(tmp_path / "kl"), launch=None)
    y = build_data(kl.dataset, torch.device("cpu")).test.y
    uniform = F.kl_div(torch.full_like(y, 0.2).log(), y, reduction="batchmean")  # for scale
    assert run["test"]["test/loss"] < 0.25 * uniform.item()
    assert run["test"]["test/acc"] > 0.8
    hinge = make_cfg("experiment=binary_hinge", "trainer.max_epochs=5")
    run = train.run(hinge, rundir.claim(tmp_path / "hinge"), launch=None)
    assert run["test"]["test/acc"] > 0.8


@pytest.mark.parametrize("log_target", [False, True])
def test_soft_targets_that_are_not_probabilities_are_refused_naming_the_key(make_cfg, log_target):
    from trainlab import fitting

    flag = str(log_target).lower()
    cfg = make_cfg(
        "experiment=soft_labels_kl", f"dataset.log_target={flag}", f"loss.log_target={flag}"
    )
    probs = torch.tensor([[0.2, 0.8, 0.0, 0.0, 0.0]])
    good = probs.log() if log_target else probs
    fitting.check_targets(cfg.dataset, "train", good, "dataset")
    bad = torch.tensor([[0.5, 0.8, 0.0, 0.0, 0.0]])  # sums to 1.3
    with pytest.raises(DataError, match=f"dataset.log_target={flag}: the train targets are not"):
        fitting.check_targets(cfg.dataset, "train", bad.log() if log_target else bad, "dataset")


def test_multi_task_weights_scale_each_head(make_cfg):
    """The value, not only the gradient: weights 1 and 0.5 give loss_a + 0.5 * loss_b."""
    loss = build_loss(make_cfg("experiment=multitask", "loss.weights.value=0.5").loss)
    output = {"label": torch.tensor([[2.0, 0.0, -1.0]]), "value": torch.tensor([[3.0]])}
    target = {"label": torch.tensor([0]), "value": torch.tensor([[1.0]])}
    label = torch.nn.functional.cross_entropy(output["label"], target["label"])
    assert loss(output, target).item() == pytest.approx(label.item() + 0.5 * (3.0 - 1.0) ** 2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=l1"], "loss=l1 fits regression or reconstruction targets, but dataset.task="
         "classification; use"),
        (["experiment=regression", "loss=cross_entropy"],
         "loss=cross_entropy fits classification or segmentation targets, but dataset.task="
         "regression"),
        (["experiment=binary", "loss=soft_margin"],
         "dataset.negative_label=0.0: loss=soft_margin needs targets in {-1, 1}"),
        (["experiment=multilabel", "loss.pos_weight=[1.0,2.0]"],
         "loss.pos_weight has 2 values but the dataset has 5 outputs"),
        (["loss.weight=[1.0,2.0,3.0]"], "loss.weight has 3 values but the dataset has 10 classes"),
        (["loss.reduction=sum"], "loss.reduction=sum: must be mean"),
        (["experiment=soft_labels_kl", "loss.reduction=mean"],
         "loss.reduction=mean: must be batchmean"),
        (["experiment=soft_labels_kl", "loss.log_target=true"],
         "loss.log_target=true: the dataset's targets are probabilities (dataset.log_target="
         "false); set loss.log_target=false"),
        (["experiment=soft_labels_kl", "dataset.log_target=true"],
         "loss.log_target=false: the dataset's targets are log-probabilities (dataset."
         "log_target=true); set loss.log_target=true"),
        (["experiment=binary", "loss=hinge"],
         "dataset.negative_label=0.0: loss=hinge needs targets in {-1, 1}"),
        (["experiment=soft_labels_kl", "loss=cross_entropy"],
         "loss=cross_entropy fits classification or segmentation targets, but dataset.task="
         "soft_labels"),
        (["experiment=multitask", "loss.losses.value._target_=torch.nn.CrossEntropyLoss"],
         "loss.losses.value=cross_entropy fits classification or segmentation targets, but "
         "dataset.task=regression"),
        (["experiment=regression", "trainer.monitor=val/acc"],
         "trainer.monitor=val/acc: dataset.task=regression reports val/loss, val/rmse, val/mae"),
        (["scheduler=plateau", "scheduler.interval=step"],
         "scheduler.interval=step: plateau steps on the monitored metric"),
    ],
)  # fmt: skip
def test_a_loss_that_does_not_fit_fails_at_check_naming_the_key(make_cfg, overrides, message):
    with pytest.raises(ConfigError) as info:
        config.check(make_cfg(*overrides))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["model=mlp", "model.num_outputs=4"], ConfigError,
         "model.num_outputs=4: the model gives outputs of shape [2, 4] but the dataset has 10"),
        (["loss=nll"], ConfigError, "loss=nll takes log-probabilities"),
        (["experiment=soft_labels_kl", "~model.layers.log_softmax"], ConfigError,
         "loss=kl_div takes log-probabilities, but the model's outputs are not"),
        (["experiment=segmentation", "model=mlp"], ConfigError,
         "model: gives outputs of shape [2, 3] but segmentation needs [2, 3, 16, 16]"),
        (["experiment=multitask", "model=mlp", "model.num_outputs=3"], ConfigError,
         "a multi-task model returns one output per head"),
        (["dataset=digits", "dataset.num_classes=8", "model=mlp"], DataError,
         "dataset.num_classes=8: the train labels run from 0 to 9; set dataset.num_classes=10"),
        (["experiment=binary", "dataset.num_outputs=2"], DataError,
         "dataset.num_outputs=2: the train targets have 1 values per sample"),
    ],
)  # fmt: skip
def test_mismatches_found_while_building_fail_before_training(
    make_cfg, tmp_path, overrides, error, message
):
    cfg = make_cfg(*overrides)
    config.check(cfg)  # passes: only building the parts shows the mismatch
    run_dir = rundir.claim(tmp_path / "run")
    with pytest.raises(error) as info:
        train.run(cfg, run_dir, launch=None)
    assert message in str(info.value)
    assert not run_dir.exists()
