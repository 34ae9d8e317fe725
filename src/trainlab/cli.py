"""The `trainlab` command: verbs -> functions. No torch import at module level, so `--help`,
`--cfg job` and config errors answer in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from trainlab import (
    config,  # noqa: F401  (registers the schema with Hydra's ConfigStore)
    sweep,  # (registers the job folder name resolver)
)
from trainlab.errors import EXIT_CONFIG

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

USAGE = """\
usage: trainlab <verb> [args]

verbs:
  train [overrides]     train one run; -m sweeps (Hydra overrides: model=mlp optimizer.lr=0.1)
  resume RUN_DIR [k=v]  continue an interrupted run in place, exactly where it stopped
  report DIR            one table of the runs under DIR (a sweep, or all of outputs/)

`trainlab train --help` lists the config groups and their options.
"""

_task_entered = False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _train_app(cfg: DictConfig) -> float | None:
    global _task_entered
    _task_entered = True
    from trainlab import train  # torch is imported here, after the config passed its checks

    return train.hydra_task(cfg)


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
    for group in groups:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        lines.append(f"  {group}: {', '.join(options)}")
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


def train(args: list[str]) -> int:
    global _task_entered
    _task_entered = False
    if "--help" in args or "-h" in args:
        print(train_help(), end="")
        return 0
    if not (CONF_DIR / "train.yaml").is_file():
        print(
            f"error: trainlab's conf/ folder is not at {CONF_DIR}; conf/ ships in the checkout, "
            "so install trainlab from it with `pip install -e <checkout>`",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    sys.argv = ["trainlab train", *args]
    try:
        _train_app()
    except SystemExit as e:
        # Hydra exits 1 for every error it reports; the ones before our task runs are
        # composition and usage errors (unknown key or option, wrong type, bad override).
        if e.code == 1 and not _task_entered:
            return EXIT_CONFIG
        return e.code if isinstance(e.code, int) else 1
    return 0


def resume(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="trainlab resume",
        description="Continue a run in place from its newest good checkpoint, exactly.",
    )
    parser.add_argument("run_dir", type=Path, help="the run folder (outputs/runs/<run>)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key=value changes: length (trainer.max_epochs=200), logging, validation and "
        "checkpoint cadence, early stopping; anything else needs --allow-change",
    )
    parser.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="KEY",
        help="let this key (or group, e.g. optimizer) differ from the stored config",
    )
    ns = parser.parse_intermixed_args(args)  # overrides and --allow-change in any order
    from trainlab import train as train_module

    argv = ["trainlab", "resume", *args]
    return train_module.resume(ns.run_dir, ns.overrides, ns.allow_change, argv=argv)


def report(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="trainlab report",
        description="One table of runs: a sweep folder, or any folder of runs (e.g. outputs).",
    )
    parser.add_argument("root", type=Path, help="a sweep folder or any folder holding runs")
    parser.add_argument("--sort", metavar="COLUMN", help="sort by a column (e.g. best, seed)")
    parser.add_argument("--desc", action="store_true", help="sort in descending order")
    parser.add_argument(
        "--group-by",
        metavar="KEY",
        help="aggregate over KEY (e.g. seed): mean ± std per configuration",
    )
    parser.add_argument("--format", choices=("md", "csv"), default="md")
    ns = parser.parse_args(args)
    sort = f"-{ns.sort}" if ns.sort and ns.desc else ns.sort
    return sweep.report(ns.root, sort, ns.group_by, ns.format)


VERBS = {"train": train, "resume": resume, "report": report}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else EXIT_CONFIG
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}\n\n{USAGE}", end="", file=sys.stderr)
        return EXIT_CONFIG
    return VERBS[verb](rest)
