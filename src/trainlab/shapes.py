"""The config rules of the training shapes (`task`, DESIGN 10): the parts only one shape has
(an adversarial run's generator optimizer, a reconstruction's corruption, a contrastive run's
views) and what each shape needs of the others. config.check calls check(cfg). No torch."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from trainlab.config import at_least, one_of
from trainlab.errors import ConfigError

# The training shapes (DESIGN 10): each has its own step function in steps.py.
TASKS = ("supervised", "adversarial", "reconstruction", "contrastive")
CORRUPTIONS = ("gaussian", "zero")  # dataset.corruption.kind (reconstruction.Corruption)

ADVERSARIAL_LOSS = "trainlab.losses.AdversarialLoss"


def check(cfg: DictConfig) -> None:
    """task: which training shape, and the parts that only one shape has."""
    one_of(cfg, "task", TASKS)
    at_least(cfg, "trainer.d_steps_per_g_step", 1)
    adversarial = cfg.task == "adversarial"
    _check_corruption(cfg)
    _check_views(cfg)
    if cfg.loss._target_ == ADVERSARIAL_LOSS and not adversarial:
        raise ConfigError(
            f"loss=adversarial: it trains a generator against a discriminator, but task="
            f"{cfg.task}; set task=adversarial (see experiment=mnist1d_gan)"
        )
    if not adversarial:
        for key in ("optimizer_g", "scheduler_g"):
            if cfg.get(key) is not None:
                raise ConfigError(
                    f"{key}: only task=adversarial has a generator; remove it or set "
                    "task=adversarial"
                )
        if cfg.trainer.d_steps_per_g_step != 1:
            raise ConfigError(
                f"trainer.d_steps_per_g_step={cfg.trainer.d_steps_per_g_step}: only "
                "task=adversarial alternates updates; set it to 1 or task=adversarial"
            )
        return
    if cfg.loss._target_ != ADVERSARIAL_LOSS:
        raise ConfigError(
            f"loss={cfg.loss._target_}: task=adversarial trains with loss=adversarial "
            "(kind: minimax_nonsaturating or hinge)"
        )
    if "generator" not in cfg.model or "discriminator" not in cfg.model:
        raise ConfigError(
            f"model={cfg.model._target_}: task=adversarial needs a generator and a "
            "discriminator; use model=gan (MLPs) or model=dcgan (convolutions)"
        )
    if cfg.optimizer_g is None:
        raise ConfigError(
            "optimizer_g: task=adversarial needs the generator's optimizer; add "
            "optimizer@optimizer_g=adam (see experiment=mnist1d_gan)"
        )
    refused = {
        "trainer.accumulate_grad_batches": (cfg.trainer.accumulate_grad_batches != 1,
                                            "set it to 1 (trainer.d_steps_per_g_step sets how "
                                            "many batches each generator step follows)"),
        "trainer.devices": (cfg.trainer.devices != 1, "train a GAN in one process for now"),
        "trainer.precision": (cfg.trainer.precision == "fp16",
                              "one grad scaler cannot serve two optimizers; use bf16 or fp32"),
        "trainer.compile": (cfg.trainer.compile, "set trainer.compile=false for task=adversarial"),
    }  # fmt: skip
    for key, (bad, fix) in refused.items():
        if bad:
            value = OmegaConf.select(cfg, key)
            raise ConfigError(f"{key}={value}: not supported with task=adversarial; {fix}")


def _check_corruption(cfg: DictConfig) -> None:
    node = cfg.dataset.get("corruption")
    if node is None:
        return
    if cfg.task != "reconstruction":
        raise ConfigError(
            f"dataset.corruption: corrupts the inputs of a denoising autoencoder, but "
            f"task={cfg.task}; set task=reconstruction (see experiment=digits_dae) or "
            "dataset.corruption=null"
        )
    kind = node.get("kind")
    if kind not in CORRUPTIONS:
        raise ConfigError(
            f"dataset.corruption.kind={kind}: must be one of {', '.join(CORRUPTIONS)} "
            "(e.g. dataset.corruption={kind:gaussian,std:0.3})"
        )
    if kind == "gaussian" and not (node.get("std") or 0) > 0:
        raise ConfigError(f"dataset.corruption.std={node.get('std')}: must be > 0 for gaussian")
    if kind == "zero" and not 0 < (node.get("rate") or 0) < 1:
        raise ConfigError(f"dataset.corruption.rate={node.get('rate')}: must be in (0, 1)")


def _check_views(cfg: DictConfig) -> None:
    views, contrastive = cfg.dataset.get("views"), cfg.task == "contrastive"
    if views is not None and not contrastive:
        raise ConfigError(
            f"dataset.views: two augmented views per sample are for task=contrastive, but "
            f"task={cfg.task}; set task=contrastive (see experiment=mnist1d_contrastive)"
        )
    if not contrastive:
        return
    if views is None:
        raise ConfigError(
            "dataset.views: task=contrastive trains on two augmented views of each sample; add "
            "+dataset.views={shift:4,scale:0.2,noise:0.2} (see experiment=mnist1d_contrastive)"
        )
    for key in ("shift", "scale", "noise"):
        at_least(cfg, f"dataset.views.{key}", 0)
    if cfg.dataset.task != "classification":
        raise ConfigError(
            f"dataset.task={cfg.dataset.task}: task=contrastive is evaluated by the k-NN "
            "accuracy of its embeddings, which needs class labels; use a classification dataset"
        )
    at_least(cfg, "trainer.knn_k", 1)
