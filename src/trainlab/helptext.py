"""What trainlab prints about itself: `trainlab --help`, `train --help` (the config groups,
their options and defaults, read from the config folders as files: no composition, no
torch) and
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
  init [DIR]            a project of your own: conf/ and models.py that trainlab train uses
  configs [GROUP]       the config groups' options; GROUP/OPTION shows one, --copy edits it
  completion SHELL      tab completion: eval "$(trainlab completion bash)" (or zsh)

`trainlab <verb> --help` says more; `trainlab train --help` lists the config groups and options.
`trainlab --version`: trainlab, torch, CUDA and Python versions.
"""


def train_help() -> str:
    """`trainlab train --help`, from the config folders alone (trainlab's and the project's):
    Hydra's own help composes every group's options (about a second); this lists files."""
    from trainlab import configs

    table, defaults = configs.options(), configs.defaults()
    yours = [str(folder) for folder in configs.folders() if folder != CONF_DIR]
    lines = [
        "usage: trainlab train [-m] [--config-dir DIR] [group=option ...] [key=value ...]",
        "",
        "Trains one run (with -m, one job per combination: a sweep) from conf/train.yaml and",
        "the options picked below; any key can be overridden (optimizer.lr=0.05).",
        "",
        "config groups (conf/<group>/<option>.yaml; trainlab configs GROUP describes each):",
    ]
    for group in (g for g in table if g):
        options = [f"{o.name}*" if o.from_project else o.name for o in table[group].values()]
        default = ""
        if group in defaults:
            default = f" (default: {defaults[group]})" if defaults[group] else " (none by default)"
        lines.append(f"  {group}: {', '.join(options)}{default}")
    lines.append("  (hydra/launcher=joblib runs a sweep's jobs in parallel locally)")
    if yours:
        lines.append(f"  * from your config folder: {', '.join(yours)}")
    lines += [
        "",
        "Your own config folder goes in front of trainlab's: ./conf when there is one,",
        "--config-dir DIR, or TRAINLAB_CONFIG_PATH (trainlab init makes a project).",
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
