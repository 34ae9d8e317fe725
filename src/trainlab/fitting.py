"""What a task's data and a model's outputs must look like: the targets a dataset node
declares checked against the data (dataspec.py calls it), the model's outputs against the
targets (preflight.py), and `trainlab predict`'s table of a model's outputs per task."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from trainlab.errors import ConfigError, DataError
from trainlab.tasks import Target


def check_targets(cfg: DictConfig, name: str, y: Target, key: str) -> None:
    """The targets of a split fit what the dataset node declares (classes, outputs, labels)."""
    task = cfg.task
    if task == "multitask":
        for head, spec in cfg.heads.items():
            check_targets(spec, name, y[head], f"{key}.heads.{head}")
        return
    if task in ("classification", "segmentation"):
        valid = y[y >= 0]  # negative labels are ignore_index values
        low, high = int(valid.min()), int(valid.max())
        if high >= cfg.num_classes:
            raise DataError(
                f"{key}.num_classes={cfg.num_classes}: the {name} labels run from {low} to "
                f"{high}; set {key}.num_classes={high + 1}"
            )
        return
    width = y.shape[1] if y.dim() > 1 else 1
    if width != cfg.num_outputs:
        raise DataError(
            f"{key}.num_outputs={cfg.num_outputs}: the {name} targets have {width} values per "
            f"sample; set {key}.num_outputs={width}"
        )
    if task == "soft_labels":
        probs = y.exp() if cfg.log_target else y
        if not torch.allclose(probs.sum(1), torch.ones(()), atol=1e-4) or bool((probs < 0).any()):
            what = "log-probabilities" if cfg.log_target else "probabilities"
            flag, other = ("true", "false") if cfg.log_target else ("false", "true")
            raise DataError(
                f"{key}.log_target={flag}: the {name} targets are not {what} (each row's "
                f"{'exp ' if cfg.log_target else ''}must be >= 0 and sum to 1); set "
                f"{key}.log_target={other} if they are the other kind"
            )
    if task in ("binary", "multilabel"):
        values = set(torch.unique(y).tolist())
        allowed = {float(cfg.negative_label), 1.0}
        if not values <= allowed:
            raise DataError(
                f"{key}.negative_label={cfg.negative_label}: the {name} targets take the values "
                f"{sorted(values)}, not {sorted(allowed)}"
            )


def check_output(dataset: DictConfig, output: Any, y: Any, key: str) -> None:
    """The model's output has the shape the dataset's targets need."""
    if dataset.task == "multitask":
        if not isinstance(output, dict) or set(output) != set(dataset.heads):
            raise ConfigError(
                f"model: returns {shapes(output)}, but dataset.heads names "
                f"{', '.join(dataset.heads)}: a multi-task model returns one output per head"
            )
        for head, spec in dataset.heads.items():
            check_output(spec, output[head], y[head], f"{key}.heads.{head}")
        return
    if dataset.task == "segmentation":
        want = [y.shape[0], dataset.num_outputs, *y.shape[1:]]
        if shapes(output) != want:
            raise ConfigError(
                f"model: gives outputs of shape {shapes(output)} but segmentation needs {want} "
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
            f"{given}: the model gives outputs of shape {shapes(output)} but the dataset has "
            f"{what}; set model.num_outputs={n} (its default, ${{dataset.num_outputs}}) or a last "
            f"layer with {n} outputs"
        )


def shapes(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shapes(v) for k, v in value.items()}
    return list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def prediction_table(
    kind: str, out: Tensor, labels: list[str] | None
) -> tuple[list[str], list[list[str]]]:
    """`trainlab predict`'s columns and rows: for classification the predicted class and each
    class's probability (named by the run's stored class names); otherwise the raw outputs."""
    if kind == "classification":
        probs = out.softmax(-1)
        labels = labels or [str(i) for i in range(out.shape[1])]
        rows = []
        for p in probs.tolist():
            best = max(range(len(p)), key=p.__getitem__)
            rows.append([labels[best], *(f"{v:.6f}" for v in p)])
        return ["prediction", *(f"p_{c}" for c in labels)], rows
    rows = [[f"{v:.6g}" for v in row] for row in out.tolist()]
    return [f"output_{i}" for i in range(out.shape[1])], rows
