"""The preflight pass: before a run is accepted, one forward pass and one loss on two training
samples, so a model that does not fit the data, or a loss that does not fit the model's
outputs, fails as a one-line config error naming keys instead of a torch error mid-run."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from trainlab.errors import ConfigError, first_line
from trainlab.loop import Parts


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
        _check_output(cfg.dataset, output, y, "dataset")
        try:
            loss = parts.loss_fn(output, y)
        except Exception as e:
            raise ConfigError(
                f"loss={cfg.loss._target_}: cannot compare the model's outputs "
                f"{_shapes(output)} with the targets {_shapes(y)}: " + first_line(e)
            ) from e
    if loss.dim() != 0:
        raise ConfigError(f"loss={cfg.loss._target_}: must return one number, not {_shapes(loss)}")
    if isinstance(parts.loss_fn, torch.nn.NLLLoss) and not torch.allclose(
        output.exp().sum(1), torch.ones((), device=output.device), atol=1e-3
    ):
        raise ConfigError(
            "loss=nll takes log-probabilities, but the model's outputs are not (exp does not sum "
            "to 1); end the model with a LogSoftmax layer (see experiment=mnist1d_nll) or use "
            "loss=cross_entropy"
        )


def _check_output(dataset: DictConfig, output: Any, y: Any, key: str) -> None:
    """The model's output has the shape the dataset's targets need."""
    if dataset.task == "multitask":
        if not isinstance(output, dict) or set(output) != set(dataset.heads):
            raise ConfigError(
                f"model: returns {_shapes(output)}, but dataset.heads names "
                f"{', '.join(dataset.heads)}: a multi-task model returns one output per head"
            )
        for head, spec in dataset.heads.items():
            _check_output(spec, output[head], y[head], f"{key}.heads.{head}")
        return
    if dataset.task == "segmentation":
        want = [y.shape[0], dataset.num_outputs, *y.shape[1:]]
        if _shapes(output) != want:
            raise ConfigError(
                f"model: gives outputs of shape {_shapes(output)} but segmentation needs {want} "
                f"(one score per class per pixel, {key}.num_outputs={dataset.num_outputs}); use a "
                "fully convolutional model such as model=fcn"
            )
        return
    width = output.shape[1] if isinstance(output, torch.Tensor) and output.dim() > 1 else None
    if width != dataset.num_outputs:
        n = dataset.num_outputs
        what = (
            f"{n} classes ({key}.num_classes={dataset.num_classes})"
            if dataset.task == "classification"
            else f"{n} outputs per sample ({key}.num_outputs={n})"
        )
        given = f"model.num_outputs={width}" if width is not None else "model"
        raise ConfigError(
            f"{given}: the model gives outputs of shape {_shapes(output)} but the dataset has "
            f"{what}; set model.num_outputs={n} (its default, ${{dataset.num_outputs}}) or a last "
            f"layer with {n} outputs"
        )


def _shapes(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shapes(v) for k, v in value.items()}
    return list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
