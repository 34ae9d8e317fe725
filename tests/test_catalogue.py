"""Every option of every config group trains a few steps through the real builders and loop.

The options are found by globbing conf/, so a new YAML file is tested as soon as it exists. An
option that needs a particular dataset, model or loss to make sense says so in NEEDS; anything
else runs with the defaults (cnn1d on MNIST-1D, Adam, cross-entropy).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from runs import saved_history
from trainlab import checkpoint_files, rundir, train
from trainlab.build import build_model
from trainlab.cli import CONF_DIR
from trainlab.data import build_data

OPTIONS = sorted(p for p in CONF_DIR.rglob("*.yaml") if p.parent != CONF_DIR)

SMALL_FAKE = [
    "dataset=fake",
    "dataset.num_train=48",
    "dataset.num_test=16",
    "trainer.batch_size=16",
]
# What an option needs beside it; by option id (group/option).
NEEDS = {
    "hydra/sweeper/pruner/median": ["hydra/sweeper=trainlab_optuna"],
    "hydra/sweeper/pruner/hyperband": ["hydra/sweeper=trainlab_optuna"],
    "model/cnn": ["dataset=digits"],
    "model/lenet": SMALL_FAKE,
    "model/torchvision": [*SMALL_FAKE, "model.name=resnet18"],
    "model/resnet9": [*SMALL_FAKE, "model.width=8"],
    "model/fcn": ["experiment=segmentation"],
    "model/multihead": ["experiment=multitask"],
    "loss/nll": ["experiment=mnist1d_nll"],
    "loss/l1": ["experiment=regression"],
    "loss/smooth_l1": ["experiment=regression"],
    "loss/huber": ["experiment=regression"],
    "loss/log_cosh": ["experiment=regression"],
    "loss/bce_with_logits": ["experiment=binary"],
    "loss/soft_margin": ["experiment=binary_soft_margin"],
    "loss/hinge": ["experiment=binary_hinge"],
    "loss/kl_div": ["experiment=soft_labels_kl"],
    "loss/adversarial": ["experiment=mnist1d_gan"],
    "model/gan": ["experiment=mnist1d_gan"],
    "model/dcgan": ["experiment=digits_dcgan"],
    "model/autoencoder": ["experiment=digits_dae"],
    "model/conv_autoencoder": ["experiment=digits_dae"],
    "model/mae": ["experiment=digits_mae"],
    "model/embedder": ["experiment=mnist1d_contrastive"],
    "loss/info_nce": ["experiment=mnist1d_contrastive"],
    "loss/triplet": ["experiment=mnist1d_contrastive"],
    "loss/bce": ["experiment=digits_dae"],
    "loss/masked_mse": ["experiment=digits_mae"],
    "dataset/synthetic_soft_labels": ["experiment=soft_labels_kl"],
    "loss/dice": ["experiment=segmentation"],
    "loss/multi_task": ["experiment=multitask"],
    "dataset/synthetic_regression": ["loss=mse"],
    "dataset/synthetic_binary": ["loss=bce_with_logits"],
    "dataset/synthetic_multilabel": ["loss=bce_with_logits"],
    "dataset/synthetic_segmentation": ["model=fcn", "loss=cross_entropy"],
    "dataset/synthetic_multitask": ["model=multihead", "loss=multi_task"],
    "dataset/fake": ["model=cnn", "dataset.num_train=48", "dataset.num_test=16"],
    "dataset/mnist": ["model=lenet"],
    "dataset/fashion_mnist": ["model=mlp"],
    "dataset/cifar10": ["model=cnn"],
    "dataset/image_folder": ["model=cnn", "trainer.batch_size=8", "dataset.num_workers=0"],
    "dataset/csv": ["model=mlp", "dataset.features=[f1,f2,f3,f4]"],
    "scheduler/lambda_warmup": ["scheduler.warmup_steps=1"],
    "experiment/mnist1d_gru": ["trainer.batch_size=20"],
}


def option_id(path) -> str:
    return str(path.relative_to(CONF_DIR).with_suffix(""))


@pytest.mark.parametrize("path", OPTIONS, ids=option_id)
def test_every_option_trains_a_few_steps(path, make_cfg, tmp_path):
    group, option = path.parent.relative_to(CONF_DIR).as_posix(), path.stem
    cfg = make_cfg(
        f"{group}={option}", *NEEDS.get(option_id(path), []),
        "trainer.max_steps=3", "trainer.val_every_epochs=1", "trainer.log_every_n_steps=1",
    )  # fmt: skip
    if cfg.dataset.get("input_shape") is None:  # csv, image_folder: shapes from the data
        build_data(cfg.dataset, torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    initial = {k: v.clone() for k, v in build_model(cfg.model).state_dict().items()}

    run_dir = rundir.claim(tmp_path / "run")
    results = train.run(cfg, run_dir, launch={"overrides": [], "choices": {group: option}})

    history = saved_history(run_dir / "checkpoints" / "last.pt")
    assert results["steps"] == 3
    assert all(math.isfinite(r["train/loss"]) for r in history)
    assert all(math.isfinite(v) for v in results["test"].values())
    final = checkpoint_files.load(run_dir / "checkpoints" / "last.pt")["model"]
    changed = [
        k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, final[k])
    ]
    assert changed, "no parameter changed"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
