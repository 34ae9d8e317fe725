"""`trainlab export`: a run's model without the rest of the checkpoint (no optimizer state, no
pickle). safetensors holds the weights alone, tensors and nothing that runs, so it is safe to
share; load_model() rebuilds the model from the config.yaml written next to it. TorchScript
and ONNX hold the whole program, for use without trainlab. A model trained on standardized
inputs is exported taking raw ones (Standardized), like predict."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from trainlab import dataspec, lock, rundir, targets
from trainlab.build import build_model
from trainlab.errors import ConfigError, TrainlabError
from trainlab.evaluation import Rebuilt, rebuild

FILES = {
    "safetensors": "model.safetensors",
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
}


class Standardized(nn.Module):
    """A model trained on standardized inputs (`dataset.standardize: true`), taking the raw
    inputs: (x - mean) / std per feature with the run's stored statistics, in float64 as
    training computed it, then the model. What an export holds, so no user of it has to know."""

    def __init__(self, model: nn.Module, stats: dict[str, list[float]], key: str) -> None:
        super().__init__()
        self.model = model
        mean, std = dataspec.stats_tensors(stats, key)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).double()
        return self.model(((flat - self.mean) / self.std).float().reshape(x.shape))


def export(run_dir: Path, fmt: str, which: str, out_dir: Path | None) -> int:
    try:
        run = rebuild(run_dir, which)
        with lock.owning(run_dir, needed=out_dir is None):  # one writer in the run at a time
            path = _export(run, fmt, out_dir or run_dir / "export")
    except TrainlabError as e:
        return rundir.report(e)
    print(f"{fmt}: {path} (weights of {run.entry['name']}, step {run.entry.get('step')})")
    if fmt == "safetensors":
        config_yaml = path.parent / "config.yaml"
        print(f"load it with: trainlab.export.load_model('{config_yaml}', '{path}')")
    return 0


def _export(run: Rebuilt, fmt: str, out_dir: Path) -> Path:
    """Write the export; returns the file written."""
    rundir.make_dir(out_dir, "--output")
    path = out_dir / FILES[fmt]
    model = run.model.cpu()
    stats = run.data.get("standardize")
    if fmt == "safetensors":
        from safetensors.torch import save_model

        save_model(model, str(path), metadata={"checkpoint": run.entry["name"]})
        # What load_model() rebuilds the model from: the run's config, resolved, and the
        # standardize statistics it applies to the inputs.
        exported = OmegaConf.to_container(run.cfg, resolve=True)
        exported["standardize_stats"] = stats
        rundir.write_record(out_dir / "config.yaml", OmegaConf.to_yaml(exported))
        return path
    if stats:
        model = Standardized(model, stats, "run.json data.standardize")
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch marks jit deprecated; the file still loads
            torch.jit.trace(model, example_input(run), strict=False).save(str(path))
    else:
        _export_onnx(run, model, path)
    return path


def load_model(config_yaml: str | Path, weights: str | Path) -> nn.Module:
    """The model an export describes: built from `config_yaml`'s model node (every target in
    the file is checked first, see targets.py), weights from `weights` (safetensors), in eval
    mode."""
    from safetensors.torch import load_model as load_weights

    cfg = OmegaConf.load(config_yaml)
    targets.check(cfg)  # every node: the file may come from someone else
    model = build_model(cfg.model)
    load_weights(model, str(weights))
    stats = cfg.get("standardize_stats")
    if stats:  # trained on standardized inputs: the model takes raw ones, as predict does
        key = f"{config_yaml}: standardize_stats"
        model = Standardized(model, OmegaConf.to_container(stats), key)
    return model.eval()


def example_input(run: Rebuilt) -> torch.Tensor:
    """One sample of the shape the model was trained on, to trace it with."""
    return torch.zeros(1, *run.cfg.dataset.input_shape)


def _export_onnx(run: Rebuilt, model: nn.Module, path: Path) -> None:
    needed = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if needed:
        raise ConfigError(
            f"--format onnx: needs the {' and '.join(needed)} package(s), which are not "
            f"installed: pip install {' '.join(needed)} (or export --format safetensors)"
        )
    # Any batch size: the first axis is named, not fixed to the example's one sample.
    torch.onnx.export(
        model, (example_input(run),), str(path), input_names=["input"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
    )  # fmt: skip
