"""What trainlab prints about itself: `trainlab --help`, `train --help` (the config groups,
their options and defaults, read from conf/ as files: no composition, no torch) and
`--version`."""

from __future__ import annotations

from trainlab.config import CONF_DIR

USAGE = """\
usage: trainlab <verb> [args]

verbs:
  train [overrides]     train one run; -m sweeps (Hydra overrides: model=mlp optimizer.lr=0.1)
  resume RUN_DIR [k=v]  continue an interrupted run in place, exactly where it stopped
  eval RUN_DIR          a checkpoint's metrics on the test (or val) split, from the run's config
  predict RUN_DIR --input FILE   predictions for new inputs (CSV table or images) as a CSV
  export RUN_DIR        the weights alone (safetensors), or TorchScript / ONNX
  report DIR            one table of the runs under DIR (a sweep, or all of outputs/)
  tensorboard [DIR]     TensorBoard on 127.0.0.1 over DIR (default outputs/)

`trainlab <verb> --help` says more; `trainlab train --help` lists the config groups and options.
`trainlab --version`: trainlab, torch, CUDA and Python versions.
"""


def train_help() -> str:
    """`trainlab train --help`, from the conf/ folder alone: Hydra's own help composes every
    group's options (about a second); this is a directory listing."""
    groups = sorted(
        p.relative_to(CONF_DIR).as_posix()
        for p in CONF_DIR.rglob("*")
        if p.is_dir() and any(p.glob("*.yaml"))
    )
    lines = [
        "usage: trainlab train [-m] [group=option ...] [key=value ...]",
        "",
        "Trains one run (with -m, one job per combination: a sweep) from conf/train.yaml and",
        "the options picked below; any key can be overridden (optimizer.lr=0.05).",
        "",
        "config groups (conf/<group>/<option>.yaml):",
    ]
    defaults = _group_defaults()
    for group in groups:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        default = ""
        if group in defaults:
            default = f" (default: {defaults[group]})" if defaults[group] else " (none by default)"
        lines.append(f"  {group}: {', '.join(options)}{default}")
    lines += [
        "  (and Hydra's own: hydra/launcher=joblib for parallel local jobs, hydra/sweeper=basic)",
        "",
        "examples:",
        "  trainlab train model=mlp optimizer=sgd optimizer.lr=0.05 scheduler=cosine",
        "  trainlab train experiment=mnist1d_gru",
        "  trainlab train -m optimizer=sgd,adam seed=0,1,2",
        "  trainlab train -m hparams_search=optuna",
        "",
        "trainlab train --cfg job     the composed config, every key with its value",
        "trainlab train --hydra-help  Hydra's own flags (--multirun, --cfg, --info, ...)",
    ]
    return "\n".join(lines) + "\n"


def _group_defaults() -> dict[str, str | None]:
    """group -> the option conf/train.yaml's defaults list picks (None: no option)."""
    import yaml

    listed = yaml.safe_load((CONF_DIR / "train.yaml").read_text()).get("defaults") or []
    entries = (item for item in listed if isinstance(item, dict))
    return {
        group: option
        for entry in entries
        for group, option in entry.items()
        if not group.startswith("override ")
    }


def version() -> str:
    """What a bug report needs first: trainlab, torch and the CUDA it was built with, Python."""
    import platform

    import torch

    import trainlab

    cuda = torch.version.cuda or "none"
    gpu = ", a GPU is visible" if torch.cuda.is_available() else ", no GPU visible"
    return (
        f"trainlab {trainlab.__version__} (torch {torch.__version__}, CUDA {cuda}{gpu}, "
        f"Python {platform.python_version()})"
    )
