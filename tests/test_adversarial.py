"""task=adversarial: the losses are the formulas, the step is the hand-written alternating
loop bit for bit, the evaluation's numbers are what they claim, and bad configs fail naming
the key. (Its exact resume is in test_resume.py's matrix; every option trains in
test_catalogue.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn import functional as F

from runs import saved_history
from trainlab import adversarial, checkpoint_files, config, distributed, rundir, train
from trainlab.build import build_loss, build_model
from trainlab.data import build_data, epoch_seed
from trainlab.errors import ConfigError
from trainlab.parts import batches, seed_everything

GAN = ["experiment=mnist1d_gan", "trainer.batch_size=200", "trainer.tensorboard.graph=false"]


def scores():
    real = torch.tensor([[2.0], [-0.5], [0.3], [4.0]], dtype=torch.float64)
    fake = torch.tensor([[-1.0], [0.7], [-3.0], [1.5]], dtype=torch.float64)
    return real, fake


def test_minimax_losses_are_the_formulas_on_a_fixed_batch(make_cfg):
    loss = build_loss(make_cfg(*GAN).loss)
    real, fake = scores()
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    d = -torch.log(d_real).mean() - torch.log(1 - d_fake).mean()
    g = -torch.log(d_fake).mean()
    assert torch.allclose(loss.discriminator(real, fake), d)
    assert torch.allclose(loss.generator_terms(fake).mean(), g)
    # by the numbers: D(x) = sigmoid(2) = 0.8808 -> -log = 0.1269, and so on
    assert loss.discriminator(real, fake).item() == pytest.approx(d.item())


def test_hinge_losses_are_the_formulas_on_a_fixed_batch(make_cfg):
    loss = build_loss(make_cfg(*GAN, "loss.kind=hinge").loss)
    real, fake = scores()
    # D: mean(max(0, 1 - r)) + mean(max(0, 1 + f)) = (0 + 1.5 + 0.7 + 0)/4 + (0 + 1.7 + 0 + 2.5)/4
    assert loss.discriminator(real, fake).item() == pytest.approx(2.2 / 4 + 4.2 / 4)
    assert loss.generator_terms(fake).mean().item() == pytest.approx(-(-1 + 0.7 - 3 + 1.5) / 4)


def hand_written_gan(cfg, steps: int, d_steps: int):
    """The textbook alternating loop, written out: same seeds, same models, same batches."""
    data = build_data(cfg.dataset, torch.device("cpu"))
    trainer = config.trainer_of(cfg)
    train_batches = batches(data.train, "train", trainer, cfg.seed, data, distributed.World())
    seed_everything(cfg.seed)
    gan = build_model(cfg.model)
    G, D = gan.generator, gan.discriminator
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optimizer.lr, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optimizer_g.lr, betas=(0.5, 0.999))
    noise = torch.Generator().manual_seed(epoch_seed(cfg.seed, adversarial.NOISE_STREAM))
    real_batches = train_batches.epoch(0)
    for _ in range(steps):
        for _ in range(d_steps):  # D, with G fixed
            x, _ = next(real_batches)
            with torch.no_grad():
                fake = G(torch.randn(len(x), gan.noise_dim, generator=noise))
            opt_d.zero_grad()
            d_loss = -F.logsigmoid(D(x)).mean() - F.logsigmoid(-D(fake)).mean()
            d_loss.backward()
            opt_d.step()
        opt_g.zero_grad()  # G, with D fixed
        z = torch.randn(len(x), gan.noise_dim, generator=noise)
        g_loss = -F.logsigmoid(D(G(z))).mean()
        g_loss.backward()
        opt_g.step()
    return gan, noise


@pytest.mark.parametrize("d_steps", [1, 2])
def test_the_adversarial_step_is_the_hand_written_alternating_loop(make_cfg, tmp_path, d_steps):
    cfg = make_cfg(*GAN, f"trainer.d_steps_per_g_step={d_steps}", "trainer.max_steps=4")
    train.run(cfg, rundir.claim(tmp_path / "run"), launch=None)
    saved = checkpoint_files.load(tmp_path / "run" / "checkpoints" / "last.pt")
    gan, noise = hand_written_gan(cfg, steps=4, d_steps=d_steps)
    assert saved["loop"]["batch_in_epoch"] == 4 * d_steps
    for name, value in gan.state_dict().items():
        assert torch.equal(saved["model"][name], value), name
    assert torch.equal(saved["noise"]["generator"], noise.get_state())
    # and both optimizers' moments are the hand loop's too
    assert len(saved["optimizer_g"]["state"]) == len(list(gan.generator.parameters()))


def test_a_gan_run_logs_both_losses_samples_and_evaluates(make_cfg, tmp_path):
    cfg = make_cfg(*GAN, "trainer.max_epochs=2", "trainer.log_every_n_steps=3")
    run_dir = rundir.claim(tmp_path / "run")
    results = train.run(cfg, run_dir, launch=None)
    assert set(results["test"]) == {
        f"test/{m}" for m in config.catalogue.TASK_METRICS["adversarial"]
    }
    assert results["monitor"] == "val/fd" and results["mode"] == "min"
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/g_loss", "train/d_real", "train/d_fake", "val/fd",
                "val/d_acc", "lr/group0", "lr_g/group0"):  # fmt: skip
        assert tag in tags["scalars"], tag
    # the fixed-noise samples, once per epoch, at the epoch's last step
    grids = acc.Images("samples/generated")
    history = saved_history(run_dir / "checkpoints" / "last.pt")
    assert [e.step for e in grids] == [r["step"] for r in history]
    assert grids[0].width > 0 and grids[0].height > 0


def test_validation_numbers_are_what_they_claim(make_cfg, tmp_path):
    """evaluate(): d_acc counts real scored > 0.5 and fake < 0.5; fd is the Frechet distance of
    the real and the generated samples, which scipy's sqrtm computes the same."""
    from scipy import linalg

    cfg = make_cfg(*GAN)
    data = build_data(cfg.dataset, torch.device("cpu"))
    trainer = config.trainer_of(cfg)
    val = batches(data.val, "val", trainer, cfg.seed, data, distributed.World())
    seed_everything(0)
    gan = build_model(cfg.model)
    loss = build_loss(cfg.loss)
    from trainlab.tasks import Task

    got = adversarial.evaluate(gan, val, loss, Task("adversarial", 1), "val")
    noise = torch.Generator().manual_seed(adversarial.EVAL_NOISE_SEED)
    real = data.val.x
    with torch.no_grad():
        fakes = [gan.generator(torch.randn(len(x), gan.noise_dim, generator=noise))
                 for x, _ in val.epoch(0)]  # fmt: skip
        fake = torch.cat(fakes)
        p_real, p_fake = (
            torch.sigmoid(gan.discriminator(real)),
            torch.sigmoid(gan.discriminator(fake)),
        )
    hits = (p_real > 0.5).sum() + (p_fake < 0.5).sum()
    assert got["val/d_acc"] == pytest.approx(hits.item() / (2 * len(real)))
    assert got["val/d_real"] == pytest.approx(p_real.mean().item(), rel=1e-6)
    a, b = real.double().numpy(), fake.double().numpy()
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)
    assert got["val/fd"] == pytest.approx(expected, rel=1e-6)
    assert adversarial.frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(
        0.0, abs=1e-6
    )


def test_signals_are_drawn_as_connected_lines():
    image = adversarial.plot_signals(torch.tensor([[0.0, 1.0, 0.0]]), height=4, stretch=1)
    assert image.shape == (1, 1, 4, 3)
    # rises from the bottom row to the top and falls back: every row of columns 0-1 is lit
    assert image[0, 0, :, 0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert image[0, 0, :, 2].tolist() == [0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=adversarial"], "loss=adversarial: it trains a generator against a "
         "discriminator, but task=supervised; set task=adversarial"),
        ([*GAN, "loss=cross_entropy"], "loss=torch.nn.CrossEntropyLoss: task=adversarial "
         "trains with loss=adversarial"),
        ([*GAN, "model=mlp"], "model=trainlab.models.MLP: task=adversarial needs a generator "
         "and a discriminator; use model=gan"),
        ([*GAN, "trainer.accumulate_grad_batches=2"], "trainer.accumulate_grad_batches=2: not "
         "supported with task=adversarial"),
        ([*GAN, "trainer.precision=fp16"], "trainer.precision=fp16: not supported with "
         "task=adversarial; one grad scaler cannot serve two optimizers"),
        ([*GAN, "optimizer@optimizer_g=lbfgs"], "optimizer_g=lbfgs: its line search"),
        ([*GAN, "optimizer_g.lr=0"], "optimizer_g.lr=0: must be a number > 0"),
        ([*GAN, "trainer.monitor=val/acc"], "trainer.monitor=val/acc: task=adversarial reports "
         "val/loss, val/d_acc"),
        (["trainer.d_steps_per_g_step=2"], "trainer.d_steps_per_g_step=2: only task=adversarial"),
        (["+optimizer@optimizer_g=adam"], "optimizer_g: only task=adversarial has a generator"),
        ([*GAN, "task=transfer"], "task=transfer: must be one of supervised, adversarial, "
         "reconstruction, contrastive"),
    ],
)  # fmt: skip
def test_gan_config_mistakes_fail_at_check_naming_the_key(make_cfg, overrides, message):
    with pytest.raises(ConfigError) as info:
        config.check(make_cfg(*overrides))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.generator.output_shape=[30]"], "model.generator=trainlab.gan.MLPGenerator: "
         "makes samples of shape [30] but the dataset's are [40]"),
        (["model.discriminator.num_outputs=2"], "gives outputs of shape [2, 2], but a "
         "discriminator gives one score per sample"),
        (["model=dcgan"], "model.generator.output_shape=[40]: DCGAN's networks take square"),
        (["model.noise=cauchy"], "model.noise=cauchy: must be one of normal, uniform"),
    ],
)  # fmt: skip
def test_gan_model_mistakes_fail_before_training(make_cfg, tmp_path, overrides, message):
    run_dir = rundir.claim(tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        train.run(make_cfg(*GAN, *overrides), run_dir, launch=None)
    assert message in str(info.value)
    assert not run_dir.exists()  # nothing left behind


def test_without_the_noise_state_an_adversarial_resume_would_differ(
    make_cfg, tmp_path, tmp_path_factory, monkeypatch
):
    """Negative control for test_resume.py's adversarial path: the same mid-epoch resume with
    the noise stream's state not restored differs from the straight run."""
    from test_resume import COMMON, PATHS, assert_same_run, crash_then_resume, straight_run

    straight = straight_run("adversarial", make_cfg, tmp_path_factory)
    cfg = make_cfg(*PATHS["adversarial"], *COMMON)
    run_dir = rundir.claim(tmp_path / "run")
    no_noise_state = lambda self, state: None  # noqa: E731
    crash_then_resume(
        cfg, run_dir, monkeypatch, straight["steps_per_epoch"] + 6,
        then=lambda m: m.setattr(adversarial.NoiseStream, "load_state_dict", no_noise_state),
    )  # fmt: skip
    with pytest.raises(AssertionError):  # (the draws differ, so weights and moments do)
        assert_same_run(straight["dir"], run_dir)
