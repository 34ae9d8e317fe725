"""The `trainlab` command: verbs -> functions. No torch import at module level, so `--help`,
`--cfg job` and config errors answer in well under a second.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from trainlab import (
    config,  # (importing it registers the schema with Hydra's ConfigStore)
    launch,
    project,
    sweep,  # (registers the job folder name resolver)
)
from trainlab.errors import EXIT_CONFIG, ConfigError, first_line
from trainlab.helptext import USAGE, train_help, version
from trainlab.signals import graceful_stop

CONF_DIR = config.CONF_DIR


_task_entered = False
# Hydra's stderr is held here until the task starts (see train()), then handed back.
_hydra_stderr: io.StringIO | None = None
_real_stderr = sys.stderr


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _train_app(cfg: DictConfig) -> float | None:
    global _task_entered
    _task_entered = True
    _release_stderr()
    from trainlab import job  # torch is imported here, after the config passed its checks

    return job.hydra_task(cfg)


def train(args: list[str]) -> int:
    global _task_entered
    _task_entered = False
    if not (CONF_DIR / "train.yaml").is_file():  # (--help would list no groups)
        print(
            f"error: trainlab's config groups are not at {CONF_DIR}; reinstall trainlab (a "
            "wheel carries them as trainlab/conf/, a checkout has conf/)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if "--help" in args or "-h" in args:
        print(train_help(), end="")
        return 0
    try:
        args, config_path = launch.own_flags(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    sys.argv = ["trainlab train", *args]
    # Signals are caught from here on: one during start-up (Hydra, the torch import) is seen
    # by the run once it is set up, and recorded, instead of killing it half-made.
    with graceful_stop() as stop, project.environment(config_path):
        code = _train(args)
    if code == 0 and stop.signum is not None and _multirun(args):
        code = 128 + stop.signum  # a sweep stopped between jobs
    return code


def _train(args: list[str]) -> int:
    global _task_entered
    message = launch.precheck(args)
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        return EXIT_CONFIG
    # Hydra reports a composition error in several lines of its internals; until the task
    # starts its stderr is held back, and an error is said again in one line (explain.py).
    # HYDRA_FULL_ERROR=1 shows Hydra's own report and traceback instead.
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if not full_error:
        _hold_stderr()
    try:
        _train_app()
    except SystemExit as e:
        held = _release_stderr(replay=False)
        # Hydra exits 1 for every error it reports; the ones before our task runs are
        # composition and usage errors (unknown key or option, wrong type, bad override).
        if e.code == 1 and not _task_entered:
            from trainlab.explain import explain

            message = explain(CONF_DIR, launch.overrides(args))
            print(held if message is None else f"error: {message}\n", end="", file=sys.stderr)
            return EXIT_CONFIG
        print(held, end="", file=sys.stderr)
        return e.code if isinstance(e.code, int) else 1
    except Exception as e:
        _release_stderr(replay=False)
        if _task_entered or full_error:
            raise
        # Hydra's usage errors (two of --cfg/-m/--info ...) surface as plain exceptions.
        print(f"error: {first_line(e)}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        _release_stderr()  # a run that never reached the task (--cfg job): its warnings
    return 0


def _multirun(args: list[str]) -> bool:
    return "-m" in args or "--multirun" in args


def _hold_stderr() -> None:
    global _hydra_stderr, _real_stderr
    _real_stderr, _hydra_stderr = sys.stderr, io.StringIO()
    sys.stderr = _hydra_stderr


def _release_stderr(replay: bool = True) -> str:
    """Stop holding Hydra's stderr back (a no-op when nothing is held); replay what was held
    (a good run's warnings) unless the caller reports it otherwise. Returns it."""
    global _hydra_stderr
    held, _hydra_stderr = _hydra_stderr, None
    if held is None:
        return ""
    sys.stderr = _real_stderr
    if replay:
        print(held.getvalue(), end="", file=sys.stderr)
    return held.getvalue()


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
    with graceful_stop():  # from before the torch import on (see train())
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


def _checkpoint_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run folder (outputs/runs/<run>)")
    parser.add_argument(
        "--checkpoint",
        default="best",
        metavar="best|last|PATH",
        help="which weights: best.pt (default), last.pt, or a checkpoint file of the run",
    )


def eval_(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="trainlab eval",
        description="Metrics of a run's checkpoint on a split, with the model, data and metrics "
        "rebuilt from the run's own config.yaml; written to RUN_DIR/eval/.",
    )
    _checkpoint_arg(parser)
    parser.add_argument("--split", choices=("test", "val"), default="test")
    ns = parser.parse_args(args)
    from trainlab import evaluation

    return evaluation.eval_run(ns.run_dir, ns.checkpoint, ns.split)


def predict(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="trainlab predict",
        description="Predictions of a run's model for new inputs: a CSV table with the training "
        "table's feature columns (dataset=csv), or an image or folder of images "
        "(dataset=image_folder). Written as a CSV.",
    )
    _checkpoint_arg(parser)
    parser.add_argument("--input", type=Path, required=True, help="CSV file, image or folder")
    parser.add_argument(
        "--output", type=Path, help="CSV to write (default RUN_DIR/predictions/<input>.csv)"
    )
    ns = parser.parse_args(args)
    from trainlab import evaluation

    return evaluation.predict(ns.run_dir, ns.input, ns.output, ns.checkpoint)


def export(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="trainlab export",
        description="A run's model without optimizer state or pickles: safetensors (weights "
        "alone, safe to share; trainlab.export.load_model rebuilds the model), TorchScript or "
        "ONNX (the onnx package must be installed).",
    )
    _checkpoint_arg(parser)
    parser.add_argument(
        "--format", choices=("safetensors", "torchscript", "onnx"), default="safetensors"
    )
    parser.add_argument("--output", type=Path, help="folder to write (default RUN_DIR/export)")
    ns = parser.parse_args(args)
    from trainlab import export as export_module

    return export_module.export(ns.run_dir, ns.format, ns.checkpoint, ns.output)


def tensorboard(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="trainlab tensorboard",
        description="TensorBoard over run folders, listening on 127.0.0.1 only.",
    )
    parser.add_argument("logdir", type=Path, nargs="?", default=Path("outputs"))
    parser.add_argument("--port", type=int, default=6006, help="0 = any free port")
    parser.add_argument(
        "--bind-all",
        action="store_true",
        help="listen on every network interface (anyone who can reach the machine can read)",
    )
    ns = parser.parse_args(args)
    from trainlab import board

    return board.serve(ns.logdir, ns.port, ns.bind_all)


def init(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="trainlab init",
        description="A project folder of your own: conf/ with an experiment, a model and a "
        "dataset that use your code, models.py, spirals.py and a README. Overwrites nothing.",
    )
    parser.add_argument("folder", type=Path, nargs="?", default=Path("."), help="(default: .)")
    ns = parser.parse_args(args)
    from trainlab import scaffold

    return scaffold.init(ns.folder)


def configs(args: list[str]) -> int:
    from trainlab import configs as configs_module

    return configs_module.main(args)


def completion(args: list[str]) -> int:
    from trainlab import completion as completion_module

    return completion_module.script(args)


def _complete(args: list[str]) -> int:
    from trainlab import completion as completion_module

    return completion_module.query(args)


VERBS = {
    "train": train,
    "resume": resume,
    "eval": eval_,
    "predict": predict,
    "export": export,
    "report": report,
    "tensorboard": tensorboard,
    "init": init,
    "configs": configs,
    "completion": completion,
}
HIDDEN = {"__complete": _complete}  # the completion scripts' query


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else EXIT_CONFIG
    verb, rest = argv[0], argv[1:]
    if verb in ("--version", "-V"):
        print(version())
        return 0
    if verb in HIDDEN:
        return HIDDEN[verb](rest)
    if verb not in VERBS:
        print(
            f"error: unknown verb {verb!r}; verbs: {', '.join(VERBS)} (trainlab --help)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return VERBS[verb](rest)
