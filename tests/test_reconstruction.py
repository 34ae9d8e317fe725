"""task=reconstruction: the targets are the clean inputs, corruption is drawn per sample
(the same draw whatever batch a sample is in, and so after a resume), a masked autoencoder
hides exactly its mask and its loss counts exactly the hidden patches, PSNR is its formula,
and mistakes fail naming the key. (Exact resume: test_resume.py's denoising path.)"""

from __future__ import annotations

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runs import saved_history
from trainlab import config, rundir, train
from trainlab.autoencoders import MaskedAutoencoder
from trainlab.errors import ConfigError
from trainlab.losses import MaskedMSELoss
from trainlab.reconstruction import Corruption


@pytest.mark.parametrize("kind", ["gaussian", "zero"])
def test_corruption_is_drawn_per_sample_whatever_the_batch(kind):
    corrupt = Corruption(kind, std=0.5, rate=0.5, seed=3)
    x = torch.rand(10, 1, 4, 4) + 1.0  # no zeros, so zeroing shows
    alone = corrupt(x[[3, 5]], torch.tensor([3, 5]), epoch=2)
    mixed = corrupt(x[[5, 9, 3]], torch.tensor([5, 9, 3]), epoch=2)
    assert torch.equal(alone[0], mixed[2]) and torch.equal(alone[1], mixed[0])
    assert not torch.equal(alone, x[[3, 5]])  # it did corrupt
    assert not torch.equal(alone[0] - x[3], alone[1] - x[5])  # each sample its own draw
    # another epoch, another draw; validation (split 1) keeps epoch 0's draw every time
    assert not torch.equal(corrupt(x[[3]], torch.tensor([3]), epoch=3), alone[:1])
    val = corrupt.for_split("val")
    assert torch.equal(val(x[[3]], torch.tensor([3]), 0), val(x[[3]], torch.tensor([3]), 7))
    if kind == "zero":  # about rate of the elements zeroed, the rest untouched
        kept = mixed != 0
        assert torch.equal(mixed[kept], x[[5, 9, 3]][kept])
        assert 0.3 < 1 - kept.float().mean().item() < 0.7


def mae(shape, ratio=0.75):
    torch.manual_seed(0)
    return MaskedAutoencoder(shape, 2, ratio, 16, 1, 2, 8, 1, "none").eval()


@pytest.mark.parametrize("shape", [(1, 8, 8), (40,)])
def test_the_mae_hides_whole_patches_and_its_loss_counts_exactly_them(shape):
    model = mae(shape)
    x = torch.rand(3, *shape)
    out = model(x)
    mask = out["mask"]
    patches = model.patchify(mask)  # (N, P, patch): each patch all hidden or all visible
    assert torch.equal(patches.amin(-1), patches.amax(-1))
    assert (patches[..., 0].sum(1) == model.num_patches - model.keep).all()  # 75% hidden
    assert model.num_patches - model.keep == round(0.75 * model.num_patches)
    loss = MaskedMSELoss()
    target = torch.rand_like(x)
    # an error only where the patches were visible costs nothing; only where hidden, all of it
    assert loss({"pred": target + 0.5 * (1 - mask), "mask": mask}, target).item() == 0.0
    assert loss({"pred": target + 0.5 * mask, "mask": mask}, target).item() == pytest.approx(0.25)


def test_the_mae_encoder_never_sees_the_hidden_patches():
    model = mae((1, 8, 8))
    x = torch.rand(2, 1, 8, 8)
    first = model(x)  # eval: the same fixed draw each call
    scrambled = torch.where(first["mask"] > 0, torch.rand_like(x) * 100, x)
    second = model(scrambled)
    assert torch.equal(first["mask"], second["mask"])
    assert torch.equal(first["pred"], second["pred"])
    # whereas changing a visible pixel changes the output
    visible = (first["mask"] == 0).nonzero()[0].tolist()
    poked = x.clone()
    poked[tuple(visible)] += 1.0
    assert not torch.equal(model(poked)["pred"], first["pred"])


def test_a_denoising_run_reports_mse_and_its_psnr_and_shows_reconstructions(make_cfg, tmp_path):
    cfg = make_cfg("experiment=digits_dae", "trainer.max_epochs=2")
    run_dir = rundir.claim(tmp_path / "run")
    results = train.run(cfg, run_dir, launch=None)
    test = results["test"]
    # digits' pixels run from 0 to 1: peak 1
    assert test["test/psnr"] == pytest.approx(10 * math.log10(1.0 / test["test/mse"]))
    assert test["test/loss"] == pytest.approx(test["test/mse"])  # loss=mse: the same number
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    acc.Reload()
    shown = acc.Images("reconstructions/input_output_target")
    assert [e.step for e in shown] == [
        r["step"] for r in saved_history(run_dir / "checkpoints" / "last.pt")
    ]


@pytest.fixture
def seen(monkeypatch):
    """Every (x, y) batch the supervised step is handed, in order."""
    from trainlab import steps

    batches_seen, real = [], steps.train_step

    def spy(model, batches, *args, **kwargs):
        batches_seen.extend(batches)
        return real(model, batches, *args, **kwargs)

    monkeypatch.setattr(steps, "train_step", spy)
    return batches_seen


def test_the_targets_are_the_clean_inputs_and_the_model_sees_them_corrupted(
    make_cfg, seen, tmp_path
):
    cfg = make_cfg("experiment=digits_dae", "trainer.max_steps=2")
    train.run(cfg, rundir.claim(tmp_path / "run"), launch=None)
    x, y = seen[0]
    assert x.shape == y.shape == (64, 1, 8, 8)
    assert y.min() >= 0 and y.max() <= 1  # clean digits
    noise = x - y
    assert 0.25 < noise.std().item() < 0.35  # dataset.corruption.std=0.3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset=digits", "+dataset.corruption={kind:gaussian,std:0.1}"],
         "dataset.corruption: corrupts the inputs of a denoising autoencoder, but "
         "task=supervised"),
        (["experiment=digits_dae", "dataset.corruption.kind=salt"],
         "dataset.corruption.kind=salt: must be one of gaussian, zero"),
        (["experiment=digits_dae", "dataset.corruption={kind:zero,rate:1.5}"],
         "dataset.corruption.rate=1.5: must be in (0, 1)"),
        (["experiment=digits_dae", "loss=cross_entropy"],
         "loss=cross_entropy fits classification or segmentation targets, but "
         "task=reconstruction; use loss= one of mse, l1, smooth_l1, huber, bce, masked_mse"),
        (["experiment=digits_dae", "trainer.monitor=val/acc"],
         "trainer.monitor=val/acc: task=reconstruction reports val/loss, val/mse, val/psnr"),
    ],
)  # fmt: skip
def test_reconstruction_config_mistakes_fail_at_check(make_cfg, overrides, message):
    with pytest.raises(ConfigError) as info:
        config.check(make_cfg(*overrides))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=mlp", "~model.output_activation"],
         "task=reconstruction rebuilds its input, shape [2, 1, 8, 8]"),
        (["model=mae", "model.patch_size=3"], "model.patch_size=3: must divide the sides"),
        (["dataset=image_folder", "dataset.num_workers=0", "~dataset.corruption",
          "model=conv_autoencoder"],
         "reconstruction, contrastive runs and dataset.corruption work"),
    ],
)  # fmt: skip
def test_reconstruction_model_mistakes_fail_before_training(make_cfg, tmp_path, overrides, message):
    run_dir = rundir.claim(tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        train.run(make_cfg("experiment=digits_dae", *overrides), run_dir, launch=None)
    assert message in str(info.value)
    assert not run_dir.exists()


def test_mae_masks_are_drawn_per_sample_in_training_whatever_the_batch():
    from trainlab.reconstruction import SampleSeeds

    model = mae((1, 8, 8)).train()
    seeded = SampleSeeds(seed=5)
    x = torch.rand(6, 1, 8, 8)
    alone = model(seeded(x[[1, 4]], torch.tensor([1, 4]), epoch=3))["mask"]
    mixed = model(seeded(x[[4, 0, 1]], torch.tensor([4, 0, 1]), epoch=3))["mask"]
    assert torch.equal(alone[0], mixed[2]) and torch.equal(alone[1], mixed[0])
    other_epoch = model(seeded(x[[1]], torch.tensor([1]), epoch=4))["mask"]
    assert not torch.equal(other_epoch[0], alone[0])  # a fresh mask each epoch
    assert not torch.equal(alone[0], alone[1])  # and each sample its own


def test_an_mae_run_trains_on_per_sample_seeded_batches(make_cfg, seen, tmp_path):
    cfg = make_cfg("experiment=digits_mae", "trainer.max_steps=1")
    train.run(cfg, rundir.claim(tmp_path / "run"), launch=None)
    x, y = seen[0]
    assert set(x) == {"x", "seeds"} and len(x["seeds"]) == len(y) == 64
    assert torch.equal(x["x"], y)  # no corruption asked for: the masks do the hiding
