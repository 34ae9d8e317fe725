"""What each kind of task measures: per-batch sums kept on the device (no sync per step) and
the means read from them at log time. The metric names are listed in config.TASK_METRICS."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

Target = Tensor | dict[str, Tensor]


@dataclass
class Task:
    kind: str  # a key of config.TASK_METRICS
    num_outputs: int
    num_classes: int | None = None
    heads: dict[str, Task] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Task:
        heads = {name: cls.from_config(spec) for name, spec in cfg.get("heads", {}).items()}
        return cls(cfg.task, cfg.num_outputs, cfg.get("num_classes"), heads)


def batch_size(y: Target) -> int:
    return next(iter(y.values())).shape[0] if isinstance(y, dict) else y.shape[0]


def new_sums(task: Task, device: torch.device) -> dict[str, Tensor]:
    sums = {"loss": _zeros((), device), "n": _zeros((), device)}
    _add_metric_sums(task, sums, "", device)
    return sums


def accumulate(task: Task, sums: dict[str, Tensor], loss: Tensor, output: Any, y: Target) -> None:
    """Add one batch: the loss weighted by the batch size, and the task's counts."""
    n = batch_size(y)
    sums["loss"] += loss.detach() * n
    sums["n"] += n
    _accumulate(task, sums, "", output, y)


def add(into: dict[str, Tensor], sums: dict[str, Tensor]) -> None:
    for key, value in sums.items():
        into[key] += value


def summarize(task: Task, sums: dict[str, Tensor], split: str) -> dict[str, float]:
    """Means of the sums as {split/metric: value}: the only place that waits for the device."""
    host = {k: v.double().cpu() for k, v in sums.items()}
    if host["n"].item() == 0:
        return {}
    out = {"loss": host["loss"].item() / host["n"].item()}
    out |= _summarize(task, host, "")
    return {f"{split}/{name}": value for name, value in out.items()}


def _zeros(shape: tuple[int, ...] | int, device: torch.device) -> Tensor:
    return torch.zeros(shape, dtype=torch.float64, device=device)


def _add_metric_sums(task: Task, sums: dict[str, Tensor], p: str, device: torch.device) -> None:
    kind = task.kind
    if kind in ("classification", "binary"):
        sums[p + "correct"], sums[p + "count"] = _zeros((), device), _zeros((), device)
    elif kind == "regression":
        sums[p + "sq_err"], sums[p + "abs_err"] = _zeros((), device), _zeros((), device)
        sums[p + "count"] = _zeros((), device)
    elif kind == "multilabel":
        for name in ("tp", "fp", "fn"):
            sums[p + name] = _zeros(task.num_outputs, device)
    elif kind == "segmentation":
        classes = max(task.num_classes or task.num_outputs, 2)
        for name in ("inter", "pred", "true"):
            sums[p + name] = _zeros(classes, device)
    elif kind == "multitask":
        for head, spec in task.heads.items():
            _add_metric_sums(spec, sums, f"{p}{head}_", device)


def _accumulate(task: Task, sums: dict[str, Tensor], p: str, output: Any, y: Target) -> None:
    kind = task.kind
    if kind == "classification":
        valid = y >= 0  # negative labels are ignore_index: they count for nothing
        sums[p + "correct"] += ((output.argmax(-1) == y) & valid).sum()
        sums[p + "count"] += valid.sum()
    elif kind == "binary":
        sums[p + "correct"] += ((output > 0) == (y > 0)).sum()
        sums[p + "count"] += y.numel()
    elif kind == "regression":
        err = output.detach().to(torch.float64) - y.reshape(output.shape)
        sums[p + "sq_err"] += (err * err).sum()
        sums[p + "abs_err"] += err.abs().sum()
        sums[p + "count"] += err.numel()
    elif kind == "multilabel":
        pred, true = output > 0, y > 0
        sums[p + "tp"] += (pred & true).sum(0)
        sums[p + "fp"] += (pred & ~true).sum(0)
        sums[p + "fn"] += (~pred & true).sum(0)
    elif kind == "segmentation":
        # One output channel is a binary mask by its logit's sign; several are per-class scores.
        pred = (output[:, 0] > 0).long() if output.shape[1] == 1 else output.argmax(1)
        ones = torch.ones(pred.numel(), dtype=torch.float64, device=pred.device)
        sums[p + "pred"].index_add_(0, pred.flatten(), ones)
        sums[p + "true"].index_add_(0, y.flatten(), ones)
        hit = (pred == y).flatten()
        sums[p + "inter"].index_add_(0, pred.flatten(), hit.to(torch.float64))
    elif kind == "multitask":
        for head, spec in task.heads.items():
            _accumulate(spec, sums, f"{p}{head}_", output[head], y[head])


def _summarize(task: Task, s: dict[str, Tensor], p: str) -> dict[str, float]:
    kind = task.kind
    if kind in ("classification", "binary"):
        return {p + "acc": s[p + "correct"].item() / max(s[p + "count"].item(), 1)}
    if kind == "regression":
        count = max(s[p + "count"].item(), 1)
        return {
            p + "rmse": (s[p + "sq_err"].item() / count) ** 0.5,
            p + "mae": s[p + "abs_err"].item() / count,
        }
    if kind == "multilabel":
        denom = 2 * s[p + "tp"] + s[p + "fp"] + s[p + "fn"]
        # A label never present and never predicted scores 0, as scikit-learn's default does.
        f1 = torch.where(denom > 0, 2 * s[p + "tp"] / denom.clamp(min=1), 0.0)
        return {p + "f1": f1.mean().item()} | {f"{p}f1_{i}": v for i, v in enumerate(f1.tolist())}
    if kind == "segmentation":
        # Foreground classes (1..K-1); a class absent from both prediction and truth is skipped.
        inter, pred, true = s[p + "inter"][1:], s[p + "pred"][1:], s[p + "true"][1:]
        seen = (pred + true) > 0
        dice = (2 * inter / (pred + true).clamp(min=1))[seen]
        iou = (inter / (pred + true - inter).clamp(min=1))[seen]
        return {p + "dice": _mean(dice), p + "iou": _mean(iou)}
    if kind == "multitask":
        out: dict[str, float] = {}
        for head, spec in task.heads.items():
            out |= _summarize(spec, s, f"{p}{head}_")
        return out
    raise ValueError(f"unknown task {kind!r}")


def _mean(values: Tensor) -> float:
    return values.mean().item() if values.numel() else 0.0
