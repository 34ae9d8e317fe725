"""What each kind of task measures: per-batch sums kept on the device (no sync per step) and
the means read from them at log time. The metric names are listed in config.TASK_METRICS.

A batch adds its loss (one kernel, in order) and, for tasks whose metrics are integer counts,
only references to its detached output and targets: those are reduced together, a few kernels
for many batches, when the sums are read or enough elements are kept (PENDING_LIMIT). Counts
are exact however the batches are grouped, so when that happens (a save, a log point) never
changes a result, and a resumed run reports what the straight run would have. Float sums
(regression errors) are added batch by batch, in order, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from trainlab import distributed

Target = Tensor | dict[str, Tensor]


@dataclass
class Task:
    kind: str  # a key of config.TASK_METRICS
    num_outputs: int
    num_classes: int | None = None
    heads: dict[str, Task] = field(default_factory=dict)
    # Whether labels may be negative (ignore_index): only then does accuracy mask them.
    ignored_labels: bool = False

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Task:
        heads = {name: cls.from_config(spec) for name, spec in cfg.get("heads", {}).items()}
        return cls(cfg.task, cfg.num_outputs, cfg.get("num_classes"), heads)


def batch_size(y: Target) -> int:
    return next(iter(y.values())).shape[0] if isinstance(y, dict) else y.shape[0]


Sums = dict[str, Any]
PENDING_LIMIT = 1 << 22  # output elements kept before they are reduced (16 MB of float32)


def new_sums(task: Task, device: torch.device) -> Sums:
    sums: Sums = {"loss": _zeros((), device), "n": 0, "pending": [], "pending_numel": 0}
    _add_metric_sums(task, sums, "", device)
    return sums


def accumulate(task: Task, sums: Sums, loss: Tensor, output: Any, y: Target) -> None:
    """Add one batch: keep its loss (weighted later by the batch size), output and targets."""
    sums["pending"].append((loss.detach(), batch_size(y), output, y))
    sums["pending_numel"] += sum(o.numel() for o in _leaves(output))
    if sums["pending_numel"] > PENDING_LIMIT:
        flush(task, sums)


def flush(task: Task, sums: Sums) -> None:
    """Reduce the kept batches into the sums, all at once."""
    pending = sums["pending"]
    if not pending:
        return
    losses = torch.stack([loss.reshape(()) for loss, *_ in pending]).to(torch.float64)
    sizes = [n for _, n, _, _ in pending]
    sums["loss"] += torch.dot(
        losses, torch.tensor(sizes, dtype=torch.float64, device=losses.device)
    )
    sums["n"] += sum(sizes)
    output = _cat([o for *_, o, _ in pending])
    y = _cat([t for *_, t in pending])
    _accumulate(task, sums, "", output, y)
    pending.clear()
    sums["pending_numel"] = 0


def add(task: Task, into: Sums, sums: Sums) -> None:
    """Fold `sums` into `into` (an interval's into its epoch's); what `into` keeps stays kept."""
    flush(task, sums)
    for key, value in sums.items():
        if key in ("pending", "pending_numel"):
            continue
        into[key] += value


def state(task: Task, sums: Sums) -> dict[str, Any]:
    """The sums as plain values for a checkpoint (the kept batches reduced first)."""
    flush(task, sums)
    return {
        k: v.cpu() if isinstance(v, Tensor) else v
        for k, v in sums.items()
        if k not in ("pending", "pending_numel")
    }


def from_state(saved: dict[str, Any], device: torch.device) -> Sums:
    sums = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in saved.items()}
    return sums | {"pending": [], "pending_numel": 0}


def summarize(task: Task, sums: Sums, split: str) -> dict[str, float]:
    """Means of the sums as {split/metric: value}: the only place that waits for the device.
    Under DDP the sums are added up over the ranks first (every rank calls this at the same
    points), so every rank reports, and decides on, the same numbers."""
    flush(task, sums)
    sums = distributed.reduce_sums(sums)
    if sums["n"] == 0:
        return {}
    host = {
        k: v.double().cpu() if isinstance(v, Tensor) else v
        for k, v in sums.items()
        if k not in ("pending", "pending_numel")
    }
    out = {"loss": host["loss"].item() / host["n"]}
    out |= _summarize(task, host, "")
    return {f"{split}/{name}": value for name, value in out.items()}


def _leaves(value: Any) -> list[Tensor]:
    return list(value.values()) if isinstance(value, dict) else [value]


def _cat(values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        return {k: torch.cat([v[k] for v in values]) for k in values[0]}
    return torch.cat(values) if len(values) > 1 else values[0]


def _zeros(shape: tuple[int, ...] | int, device: torch.device) -> Tensor:
    return torch.zeros(shape, dtype=torch.float64, device=device)


def _counts(shape: tuple[int, ...] | int, device: torch.device) -> Tensor:
    return torch.zeros(shape, dtype=torch.int64, device=device)


def _add_metric_sums(task: Task, sums: Sums, p: str, device: torch.device) -> None:
    kind = task.kind
    if kind in ("classification", "binary"):
        sums[p + "correct"], sums[p + "count"] = _counts((), device), 0
        if task.ignored_labels:
            sums[p + "count"] = _counts((), device)  # counted on the device, after masking
    elif kind == "regression":
        sums[p + "sq_err"], sums[p + "abs_err"] = _zeros((), device), _zeros((), device)
        sums[p + "count"] = 0
    elif kind == "multilabel":
        for name in ("tp", "fp", "fn"):
            sums[p + name] = _counts(task.num_outputs, device)
    elif kind == "segmentation":
        classes = max(task.num_classes or task.num_outputs, 2)
        for name in ("inter", "pred", "true"):
            sums[p + name] = _zeros(classes, device)
    elif kind == "multitask":
        for head, spec in task.heads.items():
            _add_metric_sums(spec, sums, f"{p}{head}_", device)


def _accumulate(task: Task, sums: Any, p: str, output: Any, y: Target) -> None:
    kind = task.kind
    if kind == "classification":
        hits = output.argmax(-1) == y
        if task.ignored_labels:  # negative labels are ignore_index: they count for nothing
            valid = y >= 0
            hits &= valid
            sums[p + "count"] += torch.count_nonzero(valid)
        else:
            sums[p + "count"] += y.numel()
        sums[p + "correct"] += torch.count_nonzero(hits)
    elif kind == "binary":
        sums[p + "correct"] += torch.count_nonzero((output > 0) == (y > 0))
        sums[p + "count"] += y.numel()
    elif kind == "regression":
        err = output.detach().to(torch.float64) - y.reshape(output.shape)
        sums[p + "sq_err"] += (err * err).sum()
        sums[p + "abs_err"] += err.abs().sum()
        sums[p + "count"] += err.numel()
    elif kind == "multilabel":
        pred, true = output > 0, y > 0
        sums[p + "tp"] += torch.count_nonzero(pred & true, dim=0)
        sums[p + "fp"] += torch.count_nonzero(pred & ~true, dim=0)
        sums[p + "fn"] += torch.count_nonzero(~pred & true, dim=0)
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


def _summarize(task: Task, s: Any, p: str) -> dict[str, float]:
    kind = task.kind
    if kind in ("classification", "binary"):
        return {p + "acc": s[p + "correct"].item() / max(float(s[p + "count"]), 1)}
    if kind == "regression":
        count = max(s[p + "count"], 1)
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
