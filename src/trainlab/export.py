"""`trainlab export`: a run's model without the rest of the checkpoint (no optimizer state, no
pickle). safetensors holds the weights alone, tensors and nothing that runs, so it is safe to
share; load_model() rebuilds the model from the config.yaml written next to it. TorchScript
and ONNX hold the whole program, for use without trainlab."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from trainlab import config, rundir
from trainlab.build import build_model
from trainlab.errors import ConfigError, TrainlabError
from trainlab.evaluation import Rebuilt, rebuild

FILES = {
    "safetensors": "model.safetensors",
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
}


def export(run_dir: Path, fmt: str, which: str, out_dir: Path | None) -> int:
    try:
        run = rebuild(run_dir, which)
        out_dir = out_dir or run_dir / "export"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / FILES[fmt]
        model = run.model.cpu()
        if fmt == "safetensors":
            from safetensors.torch import save_model

            save_model(model, str(path), metadata={"checkpoint": run.entry["name"]})
            # What load_model() rebuilds the model from: the run's config, resolved.
            OmegaConf.save(run.cfg, out_dir / "config.yaml", resolve=True)
        elif fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch marks jit deprecated; the file still loads
                torch.jit.trace(model, example_input(run), strict=False).save(str(path))
        else:
            _export_onnx(run, model, path)
    except TrainlabError as e:
        return rundir.report(e)
    print(f"{fmt}: {path} (weights of {run.entry['name']}, step {run.entry.get('step')})")
    if fmt == "safetensors":
        print(f"load it with: trainlab.export.load_model('{out_dir / 'config.yaml'}', '{path}')")
    return 0


def load_model(config_yaml: str | Path, weights: str | Path) -> nn.Module:
    """The model an export describes: built from `config_yaml`'s model node (its _target_ is
    checked against the allowlist first), weights from `weights` (safetensors), in eval mode."""
    from safetensors.torch import load_model as load_weights

    cfg = OmegaConf.load(config_yaml)
    config.check_targets(cfg.model, "model")
    model = build_model(cfg.model)
    load_weights(model, str(weights))
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
    torch.onnx.export(model, (example_input(run),), str(path), input_names=["input"])
