"""Which `_target_`s a config may name: checked by what they resolve to, not by their spelling.

Hydra resolves `a.b.c.d` by importing `a` and walking attributes, so a string that starts with
an allowed package can still reach anything that package imported (`trainlab.checkpoint.torch
.load`, `torch.nn.modules.module.torch.hub.load`). check(cfg) walks every node, `hydra:`
included, and for each target: (1) the spelling must start with an allowed prefix for its
place, before anything is imported; (2) it is resolved the way Hydra does, except that a step
from a module to a module must be to a real submodule and no step may be a dunder; (3) the
object it resolves to must be defined under an allowed prefix and not in a module that loads
code or pickles (torch.load, torch.hub, pickle, os, subprocess, ...), whatever path led there.
The `hydra:` subtree may name Hydra's own plugins (launchers, sweepers, callbacks: classes
only), and its logging configs only `logging`/`colorlog` classes (dictConfig's `class` and
`()` keys call what they name). No torch import here; resolving a torch target imports torch.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, ListConfig

from trainlab import project
from trainlab.errors import ConfigError

# What the run's own nodes (model, optimizer, scheduler, loss, dataset) may build. trainlab's
# building blocks only: its other modules write files and start runs. Add your own packages
# with the environment (a config cannot widen its own allowlist): export TRAINLAB_TARGETS=pkg.
ALLOWED = (
    "trainlab.models", "trainlab.gan", "trainlab.autoencoders", "trainlab.losses",
    "trainlab.data", "trainlab.datasets", "trainlab.synthetic", "trainlab.schedules",
    "trainlab.steps", "trainlab.embedders",
    "torch.nn", "torch.optim",
    "torchvision.models", "torchvision.datasets", "torchvision.transforms",
)  # fmt: skip
# What Hydra's own config (launcher, sweeper, callbacks) may name: plugins, as classes.
HYDRA_ALLOWED = (
    "hydra._internal.core_plugins", "hydra.experimental.callbacks", "hydra_plugins",
    "optuna.samplers", "optuna.pruners",
    "trainlab.rundir.RunFolderCallback", "trainlab.sweep.SweepSummaryCallback",
)  # fmt: skip
# hydra.hydra_logging / hydra.job_logging are logging.config.dictConfig input.
LOGGING_ALLOWED = ("logging", "colorlog")
LOGGING_NODES = ("hydra.hydra_logging", "hydra.job_logging")
# Refused wherever they are reached from, even when a user's package is allowed: these load
# or run code or pickles, or touch the system.
DENIED = (
    "torch.hub", "torch.serialization", "torch.jit", "torch.package", "torch.utils.model_zoo",
    "torch._dynamo", "torch.utils.cpp_extension", "torchvision.datasets.utils",
    "pickle", "_pickle", "copyreg", "marshal", "shelve", "dill", "cloudpickle", "joblib",
    "builtins", "os", "posix", "nt", "subprocess", "importlib", "runpy", "shutil", "sys",
    "ctypes", "code", "codeop", "pty", "socket", "urllib", "http", "webbrowser",
    "numpy.load", "numpy.lib.npyio",
    "hydra.utils", "hydra._internal.utils", "hydra._internal.instantiate", "hydra.main",
    "hydra.compose", "hydra.initialize",
)  # fmt: skip


def allowed() -> tuple[str, ...]:
    """ALLOWED plus the packages named in TRAINLAB_TARGETS (comma-separated) and the modules
    in the user's project folder (project.py: trusted because the user placed them there)."""
    return ALLOWED + _named() + tuple(project.trusted_modules())


def _named() -> tuple[str, ...]:
    extra = os.environ.get("TRAINLAB_TARGETS", "")
    return tuple(p.strip().strip(".") for p in extra.split(",") if p.strip())


def check(node: Any, path: str = "") -> None:
    """Every `_target_` under `node` (and, under hydra's logging configs, every `class` and
    `()`) names an allowed object; ConfigError names the first that does not."""
    if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
        logging_node = path.startswith(LOGGING_NODES)
        keys = ("class", "()") if logging_node else ("_target_",)
        for key in keys:
            if key in node and isinstance(node._get_node(key)._value(), str):
                check_one(str(node[key]), f"{path}.{key}" if path else key)
        for key in node:
            check(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig) and not node._is_none() and not node._is_missing():
        for i in range(len(node)):
            check(node._get_node(i), f"{path}[{i}]")


def check_one(target: str, key: str) -> Any:
    """Resolve one target as Hydra would and return the object, or raise ConfigError."""
    if key.startswith(LOGGING_NODES):
        prefixes, place, classes_only = LOGGING_ALLOWED, "a logging config", True
    elif key.startswith("hydra."):
        prefixes, place, classes_only = HYDRA_ALLOWED, "hydra's config", True
    else:
        prefixes, place, classes_only = allowed(), "a run's config", False
    shown = ", ".join(prefixes)
    hint = (
        f"targets in {place} must be in {shown}"
        + ("" if place != "a run's config" else "; to use your own code: put it in your "
           "project folder, next to its conf/ (trainlab init makes one), or export "
           "TRAINLAB_TARGETS=<your package>")
    )  # fmt: skip
    if not _under(target, prefixes) or _under(target, DENIED):
        raise ConfigError(f"{key}={target}: not an allowed target; {hint}")
    obj, reason, missing = _resolve(target)
    if place == "a run's config":
        _check_project_module(target, key)
    if missing:  # allowed, but not there: a typo, or a module that is not importable here
        raise ConfigError(f"{key}={target}: {reason}")
    if reason is not None:
        raise ConfigError(f"{key}={target}: not an allowed target: {reason}; {hint}")
    where = _defined_at(obj)
    if isinstance(obj, ModuleType) or not _under(where, prefixes) or _under(where, DENIED):
        raise ConfigError(
            f"{key}={target}: not an allowed target: it resolves to {where}, which is outside "
            f"the allowed packages or loads code or pickles; {hint}"
        )
    if classes_only and not isinstance(obj, type):
        raise ConfigError(f"{key}={target}: resolves to {where}, not a class; {hint}")
    return obj


def _check_project_module(target: str, key: str) -> None:
    """A target trusted only as a project module must have been imported from the project
    folder's own file, not from a module of the same name that Python found first."""
    top = target.split(".")[0]
    folder = project.trusted_modules().get(top)
    if folder is None or top not in sys.modules or _under(target, ALLOWED + _named()):
        return
    where = getattr(sys.modules[top], "__file__", None)
    if not project.imported_from(top, where, folder):
        raise ConfigError(
            f"{key}={target}: {top} is imported from {where}, not from your project folder "
            f"{folder} (another module has that name); rename {top}.py"
        )


def _resolve(target: str) -> tuple[Any, str | None, bool]:
    """hydra._internal.utils._locate's walk, refusing the steps that leave the package. Returns
    (object, why not, whether the reason is only that the name does not exist here)."""
    parts = target.split(".")
    if any(not p or p.startswith("__") for p in parts):
        return None, "every dotted part must be a plain name", False
    try:
        obj: Any = importlib.import_module(parts[0])
    except ModuleNotFoundError as e:
        if e.name != parts[0]:
            return None, f"cannot import {parts[0]} ({e.__class__.__name__}: {e})", False
        return None, _not_importable(parts[0]), True
    except Exception as e:
        return None, f"cannot import {parts[0]} ({e.__class__.__name__})", False
    for i, part in enumerate(parts[1:], start=1):
        here = ".".join(parts[: i + 1])
        if hasattr(obj, part):
            child = getattr(obj, part)
        elif isinstance(obj, ModuleType):
            try:
                child = importlib.import_module(here)
            except ModuleNotFoundError as e:
                if e.name != here:
                    return None, f"cannot import {here} ({e.__class__.__name__}: {e})", False
                return None, _no_such(obj, part), True
            except Exception as e:
                return None, f"cannot import {here} ({e.__class__.__name__})", False
        else:
            return None, f"{'.'.join(parts[:i])} has no attribute {part}", False
        if isinstance(child, ModuleType) and child.__name__ != here:
            # A module attribute that is another package (trainlab.checkpoint.torch).
            reason = f"{here} is the module {child.__name__}, not a submodule of {obj.__name__}"
            return None, reason, False
        obj = child
    return obj, None, False


def _not_importable(module: str) -> str:
    return (
        f"there is no module {module} here; run from your project folder (the one with conf/ "
        f"and {module}.py), set {project.ENV}=<project>/conf, or install its package"
    )


def _no_such(module: ModuleType, name: str) -> str:
    names = [n for n in dir(module) if not n.startswith("_")]
    near = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {module.__name__}.{near[0]}?" if near else ""
    return f"{module.__name__} has no {name}{hint}"


def _defined_at(obj: Any) -> str:
    """module.qualname of where `obj` was defined (a module's own name for a module)."""
    if isinstance(obj, ModuleType):
        return obj.__name__
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        module = type(obj).__module__
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{module}.{name}" if isinstance(name, str) else module


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)
