"""The preflight pass: before a run is accepted, one forward pass and one loss on two training
samples, so a model that does not fit the data, or a loss that does not fit the model's
outputs, fails as a one-line config error naming keys instead of a torch error mid-run."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from trainlab import fitting
from trainlab.errors import ConfigError, first_line
from trainlab.parts import Parts


def preflight(cfg: DictConfig, parts: Parts) -> None:
    """One forward pass and loss on two training samples, so a model that does not fit the data
    or the loss fails now, naming keys, rather than as a torch error mid-run. It leaves the
    model, its buffers and every random stream as they were."""
    x, y = parts.train.sample(2)
    if cfg.task == "adversarial":
        _adversarial(cfg, parts, x)
        return
    model = parts.model
    with torch.random.fork_rng(devices=[]), torch.no_grad(), parts.precision.autocast():
        model.eval()  # every forward pass in eval mode: no batch-norm statistics move
        try:
            shape = list(cfg.dataset.input_shape)
            output = _run(model, x, f"model={cfg.model._target_}",
                          f"samples of dataset.input_shape={shape}")  # fmt: skip
            if cfg.task == "contrastive":  # the loss is handed two views' projections
                output = _embeds(cfg, model, x, output)
        finally:
            model.train()
        if cfg.task == "reconstruction":
            _reconstructs(cfg, output, x)
        elif cfg.task != "contrastive":
            fitting.check_output(cfg.dataset, output, y, "dataset")
        try:
            loss = parts.loss_fn(output, y)
        except Exception as e:
            raise ConfigError(
                f"loss={cfg.loss._target_}: cannot compare the model's outputs "
                f"{fitting.shapes(output)} with the targets {fitting.shapes(y)}: " + first_line(e)
            ) from e
    if loss.dim() != 0:
        raise ConfigError(
            f"loss={cfg.loss._target_}: must return one number, not {fitting.shapes(loss)}"
        )
    takes_log_probs = {torch.nn.NLLLoss: "nll", torch.nn.KLDivLoss: "kl_div"}
    name = takes_log_probs.get(type(parts.loss_fn))
    if name is not None and not torch.allclose(
        output.exp().sum(1), torch.ones((), device=output.device), atol=1e-3
    ):
        example = "mnist1d_nll" if name == "nll" else "soft_labels_kl"
        other = "loss=cross_entropy" if name == "nll" else "a LogSoftmax as the last layer"
        raise ConfigError(
            f"loss={name} takes log-probabilities, but the model's outputs are not (exp does "
            f"not sum to 1); end the model with a LogSoftmax layer (see experiment={example})"
            + (f" or use {other}" if name == "nll" else "")
        )


def _adversarial(cfg: DictConfig, parts: Parts, x: torch.Tensor) -> None:
    """G(z) has one sample's shape and D gives one score per sample, on real and fake alike."""
    gan = parts.model
    z = torch.zeros(2, gan.noise_dim, device=x.device)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), parts.precision.autocast():
        gan.eval()
        try:
            fake = _run(
                gan.generator,
                z,
                f"model.generator={cfg.model.generator._target_}",
                f"noise of shape {list(z.shape)} (model.noise_dim={gan.noise_dim})",
            )
            if fake.shape != x.shape:
                raise ConfigError(
                    f"model.generator={cfg.model.generator._target_}: makes samples of shape "
                    f"{list(fake.shape[1:])} but the dataset's are {list(x.shape[1:])} "
                    "(dataset.input_shape); set model.generator.output_shape to it"
                )
            key = f"model.discriminator={cfg.model.discriminator._target_}"
            score = _run(gan.discriminator, x, key, f"samples of shape {list(x.shape[1:])}")
        finally:
            gan.train()
    if score.shape != (2, 1):
        raise ConfigError(
            f"{key}: gives outputs of shape {list(score.shape)}, but a discriminator gives one "
            "score per sample, (N, 1); set its num_outputs to 1"
        )


def _reconstructs(cfg: DictConfig, output: object, x: torch.Tensor) -> None:
    """A reconstruction has the input's shape (a masked autoencoder's: {"pred", "mask"})."""
    pred = output.get("pred") if isinstance(output, dict) else output
    if not isinstance(pred, torch.Tensor) or pred.shape != x.shape:
        raise ConfigError(
            f"model={cfg.model._target_}: gives outputs of shape {fitting.shapes(output)}, but "
            f"task=reconstruction rebuilds its input, shape {list(x.shape)}; use "
            "model=autoencoder, conv_autoencoder or mae"
        )


def _embeds(
    cfg: DictConfig, model: torch.nn.Module, x: torch.Tensor, features: object
) -> torch.Tensor:
    """Samples give features (N, F); two views of each give projections (N, 2, D): what the
    contrastive loss is handed."""
    if not (isinstance(features, torch.Tensor) and features.dim() == 2):
        raise ConfigError(
            f"model={cfg.model._target_}: gives {fitting.shapes(features)} for samples; "
            "task=contrastive needs one feature vector per sample; use model=embedder"
        )
    views = _run(model, torch.stack([x, x], 1), f"model={cfg.model._target_}",
                 f"two views of shape {[len(x), 2, *x.shape[1:]]}")  # fmt: skip
    if views.dim() != 3 or views.shape[:2] != (len(x), 2):
        raise ConfigError(
            f"model={cfg.model._target_}: gives {fitting.shapes(views)} for two views of each "
            f"sample, not ({len(x)}, 2, D); use model=embedder"
        )
    return views


def _run(net: torch.nn.Module, x: torch.Tensor, key: str, what: str) -> torch.Tensor:
    try:
        return net(x)
    except Exception as e:
        raise ConfigError(f"{key}: fails on {what}: {first_line(e)}") from e
