"""The preflight pass: before a run is accepted, one forward pass and one loss on two training
samples, so a model that does not fit the data, or a loss that does not fit the model's
outputs, fails as a one-line config error naming keys instead of a torch error mid-run."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from trainlab import tasks
from trainlab.errors import ConfigError, first_line
from trainlab.parts import Parts


def preflight(cfg: DictConfig, parts: Parts) -> None:
    """One forward pass and loss on two training samples, so a model that does not fit the data
    or the loss fails now, naming keys, rather than as a torch error mid-run. It leaves the
    model, its buffers and every random stream as they were."""
    x, y = parts.train.sample(2)
    model = parts.model
    with torch.random.fork_rng(devices=[]), torch.no_grad(), parts.precision.autocast():
        model.eval()
        try:
            output = model(x)
        except Exception as e:
            shape = list(cfg.dataset.input_shape)
            raise ConfigError(
                f"model={cfg.model._target_}: fails on samples of dataset.input_shape={shape}: "
                + first_line(e)
            ) from e
        finally:
            model.train()
        tasks.check_output(cfg.dataset, output, y, "dataset")
        try:
            loss = parts.loss_fn(output, y)
        except Exception as e:
            raise ConfigError(
                f"loss={cfg.loss._target_}: cannot compare the model's outputs "
                f"{tasks.shapes(output)} with the targets {tasks.shapes(y)}: " + first_line(e)
            ) from e
    if loss.dim() != 0:
        raise ConfigError(
            f"loss={cfg.loss._target_}: must return one number, not {tasks.shapes(loss)}"
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
