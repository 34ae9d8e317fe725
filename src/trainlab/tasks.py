"""What each kind of task measures: per-batch sums kept on the device (no sync per step) and
the means read from them at log time. The metric names are listed in catalogue.TASK_METRICS.

A batch adds its loss (one kernel, in order) and, for tasks whose metrics are integer counts,
only references to its detached output and targets: those are reduced together, a few kernels
for many batches, when the sums are read or enough elements are kept (PENDING_LIMIT). Counts
are exact however the batches are grouped, so when that happens (a save, a log point) never
changes a result, and a resumed run reports what the straight run would have. Float sums
(regression errors) are added batch by batch, in order, for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.nn import functional as F

from trainlab import distributed

Target = Tensor | dict[str, Tensor]


@dataclass
class Task:
    kind: str  # a key of catalogue.TASK_METRICS
    num_outputs: int
    num_classes: int | None = None
    heads: dict[str, Task] = field(default_factory=dict)
    # Whether labels may be negative (ignore_index): only then does accuracy mask them.
    ignored_labels: bool = False
    # Reconstruction: the clean inputs' range (max - min over the train split), PSNR's peak.
    peak: float = 1.0
    knn_k: int = 20  # contrastive: the neighbours that vote in the k-NN evaluation

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Task:
        # heads: multi-task datasets only; num_classes: the tasks that have classes.
        heads = (
            {n: cls.from_config(spec) for n, spec in cfg.heads.items()} if "heads" in cfg else {}
        )
        classes = cfg.num_classes if "num_classes" in cfg else None
        return cls(cfg.task, cfg.num_outputs, classes, heads)


def task_of(
    cfg: DictConfig, targets: list[Target], shape: str = "supervised", knn_k: int = 20
) -> Task:
    """The task of a dataset node; `targets` are the labels held in memory (data.held_targets).
    `shape`, the run's top-level task: adversarial and reconstruction runs measure their own
    things, whatever the dataset's labels (reconstruction's targets are the inputs)."""
    if shape == "adversarial":
        return Task("adversarial", 1)
    if shape == "contrastive":
        return Task("contrastive", cfg.num_outputs, cfg.num_classes, knn_k=knn_k)
    if shape == "reconstruction":
        train = targets[0]
        return Task("reconstruction", int(train[0].numel()), peak=float(train.max() - train.min()))
    task = Task.from_config(cfg)
    if task.kind == "classification":
        # Accuracy masks negative labels (ignore_index) only where some exist: one check here
        # spares the mask on every batch.
        task.ignored_labels = any(bool((y < 0).any()) for y in targets)
    return task


def new_confusion(task: Task, device: torch.device) -> Tensor | None:
    """Zeroed (true class, predicted class) counts for a classification task; None otherwise."""
    if task.kind != "classification":
        return None
    n = task.num_classes
    return torch.zeros(n, n, dtype=torch.int64, device=device)


def count_confusion(confusion: Tensor, output: Tensor, y: Tensor) -> None:
    """Add a batch's (true class, predicted class) pairs; negative labels (ignore_index) are
    left out."""
    n, keep = len(confusion), y >= 0
    pairs = y[keep] * n + output.argmax(-1)[keep]
    confusion.view(-1).add_(torch.bincount(pairs, minlength=n * n))


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
    if kind in ("classification", "binary", "soft_labels"):
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
    elif kind == "reconstruction":
        sums["sq_err"], sums["count"] = _zeros((), device), _counts((), device)
    elif kind == "contrastive":
        sums["pos_sim"], sums["count"] = _zeros((), device), 0
    elif kind == "adversarial":  # per-sample results of steps.adversarial_step
        sums["d_real"], sums["d_fake"], sums["g_loss"] = (_zeros((), device) for _ in range(3))
        sums["d_hits"], sums["count"], sums["g_count"] = _counts((), device), 0, 0


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
    elif kind == "soft_labels":  # (log-)probabilities: the same argmax either way
        sums[p + "correct"] += torch.count_nonzero(output.argmax(-1) == y.argmax(-1))
        sums[p + "count"] += y.shape[0]
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
    elif kind == "reconstruction":
        # A masked autoencoder's output says which parts were hidden: only those are scored.
        pred, mask = (
            (output["pred"], output["mask"]) if isinstance(output, dict) else (output, None)
        )
        err = (pred.detach().to(torch.float64) - y.reshape(pred.shape)).square()
        if mask is None:
            sums["sq_err"] += err.sum()
            sums["count"] += err.numel()
        else:
            sums["sq_err"] += (err * mask).sum()
            sums["count"] += torch.count_nonzero(mask)
    elif kind == "contrastive":  # (N, 2, D): the two views' projections
        sums["pos_sim"] += F.cosine_similarity(output[:, 0], output[:, 1], dim=-1).double().sum()
        sums["count"] += len(output)
    elif kind == "adversarial":
        real, fake = output["d_real"], output["d_fake"]
        sums["d_real"] += real.double().sum()
        sums["d_fake"] += fake.double().sum()
        # D is right where it gives real samples p > 0.5 and generated ones p < 0.5.
        sums["d_hits"] += torch.count_nonzero(real > 0.5) + torch.count_nonzero(fake < 0.5)
        sums["count"] += real.numel()
        sums["g_loss"] += output["g_loss"].double().sum()
        sums["g_count"] += output["g_loss"].numel()


def _summarize(task: Task, s: Any, p: str) -> dict[str, float]:
    kind = task.kind
    if kind in ("classification", "binary", "soft_labels"):
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
    if kind == "reconstruction":
        mse = s["sq_err"].item() / max(s["count"].item(), 1)
        psnr = 10 * math.log10(task.peak**2 / mse) if mse > 0 else math.inf
        return {"mse": mse, "psnr": psnr}
    if kind == "contrastive":
        return {"pos_sim": s["pos_sim"].item() / max(s["count"], 1)}
    if kind == "adversarial":
        n = max(s["count"], 1)
        return {
            "d_acc": s["d_hits"].item() / (2 * n),
            "d_real": s["d_real"].item() / n,
            "d_fake": s["d_fake"].item() / n,
            "g_loss": s["g_loss"].item() / s["g_count"] if s["g_count"] else float("nan"),
        }
    if kind == "multitask":
        out: dict[str, float] = {}
        for head, spec in task.heads.items():
            out |= _summarize(spec, s, f"{p}{head}_")
        return out
    raise ValueError(f"unknown task {kind!r}")


def _mean(values: Tensor) -> float:
    return values.mean().item() if values.numel() else 0.0
