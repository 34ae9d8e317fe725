"""Shared fixtures: compose the real config from conf/ (Hydra's compose API), shrink it, and
run it in-process on CPU in seconds."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import files
import trainlab.config  # noqa: F401  (registers the schema)
from trainlab.cli import CONF_DIR

REPO = CONF_DIR.parent

# Small and fast, but the real pipeline: 2 epochs of the default model and data.
TINY = ["trainer.max_epochs=2", "trainer.log_every_n_steps=5", "trainer.num_threads=1"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the whole session: the MNIST-1D cache (generated once) and small
    files in the formats of the file-based datasets, written here (nothing is downloaded)."""
    root = tmp_path_factory.mktemp("data")
    files.write_mnist(root / "MNIST" / "raw", n_train=120, n_test=40)
    files.write_mnist(root / "FashionMNIST" / "raw", n_train=120, n_test=40)
    files.write_cifar(root / "cifar-10-batches-py", per_batch=20)
    files.write_csv(root / "table.csv", rows=90)
    files.write_images(root / "images" / "train", classes=("cats", "dogs"), per_class=15)
    return root


@pytest.fixture
def make_cfg(data_dir: Path, tmp_path: Path):
    """make_cfg(*overrides) -> the composed, resolved task config (no `hydra` node), with
    outputs under tmp_path and the session's data cache."""

    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        paths = [f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path / 'outputs'}"]
        return compose_cfg([*paths, *(TINY if tiny else []), *overrides])

    return make


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="test"):
        full = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(full)  # for ${hydra:runtime.choices...} in `name`
    cfg = copy.deepcopy(full)
    with open_dict(cfg):
        del cfg["hydra"]
    # As Hydra hands it to the task: interpolations resolve when read (a model's
    # ${dataset.num_features} sees what the data filled in, dataspec.py); only `name`, which
    # reads Hydra's runtime state, is resolved now.
    cfg.name = str(cfg.name)
    return cfg


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None):
    """The real command line, in a fresh process: `python -m trainlab ...`."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "trainlab", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
