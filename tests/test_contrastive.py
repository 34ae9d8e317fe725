"""task=contrastive: InfoNCE and the triplet loss are their formulas, the k-NN accuracy is
scikit-learn's, the two views are drawn per sample, a run reports what it claims, and
mistakes fail naming the key. (Exact resume: test_resume.py's contrastive path.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from trainlab import checkpoint_files, config, distributed, rundir, train
from trainlab.build import build_model
from trainlab.contrastive import TwoViews, knn_accuracy
from trainlab.data import build_data
from trainlab.errors import ConfigError
from trainlab.losses import InfoNCELoss, TripletLoss
from trainlab.parts import batches


def views(n=5, d=3, seed=0):
    torch.manual_seed(seed)
    return torch.randn(n, 2, d, dtype=torch.float64)


def test_info_nce_is_simclr_nt_xent_by_hand():
    pairs, t = views(), 0.5
    z = torch.cat([pairs[:, 0], pairs[:, 1]])
    z = z / z.norm(dim=1, keepdim=True)
    n2, total = len(z), 0.0
    for i in range(n2):
        positive = (i + n2 // 2) % n2
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[positive]) / t) / sum(sims))
    assert InfoNCELoss(t)(pairs).item() == pytest.approx(total / n2, rel=1e-9)


def test_triplet_loss_is_its_formula_by_hand():
    pairs, margin = views(), 1.0
    a, p = pairs[:, 0], pairs[:, 1]
    n = p.roll(1, 0)  # the next sample's second view
    hand = sum(
        max(0.0, float((a[i] - p[i]).norm() - (a[i] - n[i]).norm()) + margin) for i in range(5)
    )
    assert TripletLoss(margin)(pairs).item() == pytest.approx(hand / 5, abs=1e-5)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_accuracy_is_scikit_learns_leave_one_out(k):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    centres = rng.normal(size=(4, 8))
    features = centres[labels] + 1.5 * rng.normal(size=(200, 8))
    classifier = KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(features, labels)
    expected = (classifier.predict(None) == labels).mean()  # None: each point not its own neighbour
    got = knn_accuracy(torch.from_numpy(features), torch.from_numpy(labels), k)
    assert got == pytest.approx(expected)
    assert 0.3 < got < 1.0  # neither chance nor trivial: the comparison means something


def test_two_views_are_drawn_per_sample_whatever_the_batch():
    make = TwoViews(shift=3, scale=0.3, noise=0.2, seed=1)
    x = torch.randn(10, 40)
    alone = make(x[[2, 7]], torch.tensor([2, 7]), epoch=1)
    mixed = make(x[[7, 0, 2]], torch.tensor([7, 0, 2]), epoch=1)
    assert alone.shape == (2, 2, 40)
    assert torch.equal(alone[0], mixed[2]) and torch.equal(alone[1], mixed[0])
    assert not torch.equal(alone[:, 0], alone[:, 1])  # two different views
    assert not torch.equal(make(x[[2]], torch.tensor([2]), epoch=2), alone[:1])
    images = make(torch.randn(3, 1, 8, 8), torch.arange(3), epoch=0)
    assert images.shape == (3, 2, 1, 8, 8)


def test_a_contrastive_run_reports_the_knn_accuracy_of_its_best_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg("experiment=mnist1d_contrastive", "trainer.max_epochs=2")
    run_dir = rundir.claim(tmp_path / "run")
    results = train.run(cfg, run_dir, launch=None)
    assert set(results["test"]) == {"test/knn_acc"}
    assert set(results["best"]) >= {"train/loss", "train/pos_sim", "val/knn_acc"}
    # the number is the k-NN accuracy of best.pt's features on the test split
    data = build_data(cfg.dataset, torch.device("cpu"), task="contrastive")
    model = build_model(cfg.model)
    model.load_state_dict(checkpoint_files.load(run_dir / "checkpoints" / "best.pt")["model"])
    with torch.no_grad():
        features = model.eval()(data.test.x)
    assert results["test"]["test/knn_acc"] == pytest.approx(
        knn_accuracy(features, data.test.y, cfg.trainer.knn_k)
    )
    test = batches(data.test, "test", config.trainer_of(cfg), 0, data, distributed.World())
    assert test.transform is None  # evaluation embeds the samples as they are


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment=mnist1d_contrastive", "task=supervised"],
         "dataset.views: two augmented views per sample are for task=contrastive"),
        (["experiment=mnist1d_contrastive", "~dataset.views"],
         "dataset.views: task=contrastive trains on two augmented views"),
        (["experiment=mnist1d_contrastive", "dataset.views.shift=-1"],
         "dataset.views.shift=-1: must be >= 0"),
        (["experiment=mnist1d_contrastive", "loss=cross_entropy"],
         "loss=cross_entropy fits classification or segmentation targets, but "
         "task=contrastive; use loss= one of info_nce, triplet"),
        (["loss=info_nce"], "loss=info_nce fits contrastive targets, but dataset.task="
         "classification"),
        (["experiment=mnist1d_contrastive", "trainer.knn_k=0"], "trainer.knn_k=0: must be >= 1"),
    ],
)  # fmt: skip
def test_contrastive_config_mistakes_fail_at_check(make_cfg, overrides, message):
    with pytest.raises(ConfigError) as info:
        config.check(make_cfg(*overrides))
    assert message in str(info.value)


def test_a_model_that_does_not_embed_two_views_fails_before_training(make_cfg, tmp_path):
    run_dir = rundir.claim(tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        train.run(make_cfg("experiment=mnist1d_contrastive", "model=mlp"), run_dir, launch=None)
    assert "model=trainlab.models.MLP: fails on two views of shape [2, 2, 40]" in str(info.value)
    assert not run_dir.exists()


def test_each_row_is_rolled_by_its_own_shift_as_torch_roll_does():
    from trainlab.contrastive import roll_each

    x = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5).float()
    shifts = torch.tensor([[1, -2], [3, 0]])
    rolled = roll_each(x, shifts)
    for row, (a, b) in enumerate(shifts.tolist()):
        assert torch.equal(rolled[row], torch.roll(x[row], (a, b), (1, 2)))
    signals = torch.arange(12).reshape(3, 4).float()
    by = torch.tensor([[1], [-1], [5]])
    expected = [torch.roll(signals[i], int(by[i, 0]), 0) for i in range(3)]
    assert torch.equal(roll_each(signals, by), torch.stack(expected))
