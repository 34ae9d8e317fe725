"""What the catalogue's options promise each other: the metrics each kind of task reports,
the tasks each loss fits, and the check of a loss node against its dataset node. No torch:
config.check uses it before anything is built."""

from __future__ import annotations

from omegaconf import DictConfig

from trainlab.errors import ConfigError

# What each kind of task measures on every split (train/, val/, test/). Multi-label runs add
# f1_<i> per label; multi-task runs add <head>_<metric> for each head's own task.
TASK_METRICS = {
    "classification": ("loss", "acc"),
    "binary": ("loss", "acc"),
    "regression": ("loss", "rmse", "mae"),
    "multilabel": ("loss", "f1"),
    "segmentation": ("loss", "dice", "iou"),
    "multitask": ("loss",),
    # Targets are per-class probabilities (or their logs); acc: the most likely class agrees.
    "soft_labels": ("loss", "acc"),
    # task=adversarial, whatever the dataset: loss is the discriminator's; d_real and d_fake
    # its mean probability of "real" on real and generated samples; d_acc its accuracy at
    # telling them apart (0.5 when the generator fools it); fd a Frechet distance between real
    # and generated samples (val/ and test/ only).
    "adversarial": ("loss", "d_acc", "d_real", "d_fake", "g_loss", "fd"),
    # task=reconstruction: mse per element (of the hidden parts, for a masked autoencoder)
    # and the PSNR, 10 log10(peak^2 / mse), peak = the clean train inputs' range.
    "reconstruction": ("loss", "mse", "psnr"),
    # task=contrastive: the loss and pos_sim (the two views' cosine similarity) in training;
    # knn_acc (leave-one-out k-NN accuracy of the features, contrastive.py) on val/ and test/.
    "contrastive": ("loss", "pos_sim", "knn_acc"),
}
# The run-level shapes (shapes.TASKS) whose metrics do not follow the dataset's task.
SHAPES = ("adversarial", "reconstruction", "contrastive")
DATASET_TASKS = tuple(t for t in TASK_METRICS if t not in SHAPES)
LOWER_IS_BETTER = ("loss", "rmse", "mae", "fd", "mse")

# The tasks each loss fits, and its option name in conf/loss/ (for messages). A `_target_` not
# listed here (your own loss) is not checked; the preflight pass still runs it once.
LOSS_TASKS = {
    "torch.nn.CrossEntropyLoss": ("cross_entropy", ("classification", "segmentation")),
    "torch.nn.NLLLoss": ("nll", ("classification", "segmentation")),
    "torch.nn.MultiMarginLoss": ("multi_margin", ("classification",)),
    "trainlab.losses.MSELoss": ("mse", ("regression", "classification", "reconstruction")),
    "torch.nn.L1Loss": ("l1", ("regression", "reconstruction")),
    "torch.nn.SmoothL1Loss": ("smooth_l1", ("regression", "reconstruction")),
    "torch.nn.HuberLoss": ("huber", ("regression", "reconstruction")),
    "torch.nn.BCELoss": ("bce", ("reconstruction",)),  # on probabilities: a sigmoid output
    "trainlab.losses.MaskedMSELoss": ("masked_mse", ("reconstruction",)),
    "trainlab.losses.InfoNCELoss": ("info_nce", ("contrastive",)),
    "trainlab.losses.TripletLoss": ("triplet", ("contrastive",)),
    "trainlab.losses.LogCoshLoss": ("log_cosh", ("regression",)),
    "torch.nn.BCEWithLogitsLoss": ("bce_with_logits", ("binary", "multilabel")),
    "torch.nn.SoftMarginLoss": ("soft_margin", ("binary", "multilabel")),
    "trainlab.losses.BinaryHingeLoss": ("hinge", ("binary", "multilabel")),
    "torch.nn.KLDivLoss": ("kl_div", ("soft_labels",)),
    "trainlab.losses.DiceLoss": ("dice", ("segmentation",)),
    "trainlab.losses.MultiTaskLoss": ("multi_task", ("multitask",)),
}
# Binary targets come as {negative_label, 1}: BCE wants 0/1, the soft margin -1/+1.
NEGATIVE_LABEL = {
    "torch.nn.BCEWithLogitsLoss": 0.0,
    "torch.nn.SoftMarginLoss": -1.0,
    "trainlab.losses.BinaryHingeLoss": -1.0,
}
# The reduction each loss must use: the batch mean, which trainlab weights by the batch size
# to report exact epoch means. KL divergence's batch mean is `batchmean` (its `mean` divides
# by the number of elements as well, which is not the KL divergence).
REDUCTION = {"torch.nn.KLDivLoss": "batchmean"}


def metric_names(dataset: DictConfig, task: str = "supervised") -> list[str]:
    """Every metric a run on this dataset reports per split (without the split prefix)."""
    if task in SHAPES:
        return list(TASK_METRICS[task])
    names = list(TASK_METRICS[dataset.task])
    if dataset.task == "multilabel":
        names += [f"f1_{i}" for i in range(dataset.num_outputs)]
    if dataset.task == "multitask":
        for head, spec in dataset.heads.items():
            names += [f"{head}_{m}" for m in TASK_METRICS[spec.task] if m != "loss"]
    return names


def check_loss(loss: DictConfig, dataset: DictConfig, key: str, shape: str = "supervised") -> None:
    """The loss fits the dataset's task (or the run's shape: a reconstruction's targets are
    the inputs), its targets and its class count."""
    target = loss._target_
    kind = shape if shape in SHAPES else dataset.task
    reduction = REDUCTION.get(target, "mean")
    if "reduction" in loss and loss.reduction != reduction:
        raise ConfigError(
            f"{key}.reduction={loss.reduction}: must be {reduction}; trainlab weights each "
            "batch's mean loss by the batch size to report exact epoch means"
        )
    logs = bool(dataset.get("log_target"))
    if target == "torch.nn.KLDivLoss" and loss.log_target != logs:
        raise ConfigError(
            f"{key}.log_target={_yaml(loss.log_target)}: the dataset's targets are "
            f"{'log-probabilities' if logs else 'probabilities'} (dataset.log_target="
            f"{_yaml(logs)}); set {key}.log_target={_yaml(logs)}"
        )
    if target in LOSS_TASKS and shape != "adversarial":
        option, tasks = LOSS_TASKS[target]
        if kind not in tasks:
            fitting = [name for name, t in LOSS_TASKS.values() if kind in t]
            what = f"task={kind}" if kind in SHAPES else f"dataset.task={kind}"
            raise ConfigError(
                f"{key}={option} fits {' or '.join(tasks)} targets, but {what}; use {key}= one "
                f"of {', '.join(fitting)}"
            )
    if kind in SHAPES:
        return  # no labels (reconstruction), or labels only the k-NN evaluation reads
    if target in NEGATIVE_LABEL and dataset.get("negative_label") != NEGATIVE_LABEL[target]:
        want = NEGATIVE_LABEL[target]
        raise ConfigError(
            f"dataset.negative_label={dataset.get('negative_label')}: {key}="
            f"{LOSS_TASKS[target][0]} needs targets in {{{want:g}, 1}}; set "
            f"dataset.negative_label={want:g}"
        )
    # Class weights come one per class; BCE's weight and pos_weight one per output.
    per_output = target == "torch.nn.BCEWithLogitsLoss"
    for name in ("weight", "pos_weight"):
        value = loss.get(name)
        unit = "output" if per_output or name == "pos_weight" else "class"
        width = dataset.num_outputs if unit == "output" else dataset.get("num_classes")
        if value is not None and width is not None and len(value) != width:
            units = "classes" if unit == "class" else "outputs"
            raise ConfigError(
                f"{key}.{name} has {len(value)} values but the dataset has {width} {units} "
                f"(dataset.num_{units}); give one per {unit}"
            )
    smoothing = loss.get("label_smoothing")
    if smoothing is not None and not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"{key}.label_smoothing={smoothing}: must be in [0, 1)")
    if target == "trainlab.losses.MultiTaskLoss":
        for head, sub in loss.losses.items():
            if head not in dataset.heads:
                raise ConfigError(
                    f"{key}.losses.{head}: the dataset has no head {head!r}; heads: "
                    f"{', '.join(dataset.heads)}"
                )
            check_loss(sub, dataset.heads[head], f"{key}.losses.{head}")


def _yaml(flag: bool) -> str:
    return "true" if flag else "false"
