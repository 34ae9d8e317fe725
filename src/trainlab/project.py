"""A user's project: a folder of their own that holds a `conf/` (config groups on top of
trainlab's packaged ones) and the Python modules those configs name. No torch import.

The config folders, first found first: `--config-dir DIR` (trainlab train puts it in front of
TRAINLAB_CONFIG_PATH for the command and the processes it starts), each folder in
TRAINLAB_CONFIG_PATH (os.pathsep-separated), then `./conf` when the launch folder has one.
Hydra searches them before trainlab's own conf/ (the search path plugin in
hydra_plugins/trainlab_project), so a project's option of the same name wins and new ones add
to a group. A config folder's parent is its project folder: it goes on sys.path (at the end,
so a project file cannot shadow an installed module), and the modules directly in it
(`models.py`, `mypkg/`) are trusted targets, because the user placed them there. A run's own
config.yaml cannot name a project: trust comes from where the command runs, never from a file.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from trainlab.errors import ConfigError

ENV = "TRAINLAB_CONFIG_PATH"


def config_dirs() -> list[Path]:
    """The user's config folders, highest precedence first (trainlab's own conf/ not among
    them). A folder named in TRAINLAB_CONFIG_PATH that is not there is a ConfigError."""
    found: list[Path] = []
    for entry in os.environ.get(ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        path = Path(entry).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(
                f"{ENV}={os.environ[ENV]}: {path} is not a folder; name your project's conf/ "
                "folder (trainlab init DIR makes one)"
            )
        found.append(path)
    from trainlab.config import CONF_DIR  # (config imports targets, which imports this)

    local = Path("conf").resolve()
    if local.is_dir():
        found.append(local)
    unique: list[Path] = []
    for path in found:
        if path != CONF_DIR.resolve() and path not in unique:
            unique.append(path)
    return unique


def project_dirs() -> list[Path]:
    """The folders that hold the config folders: the user's projects."""
    unique: list[Path] = []
    for path in config_dirs():
        if path.parent not in unique:
            unique.append(path.parent)
    return unique


def trusted_modules() -> dict[str, Path]:
    """Top-level module name -> project folder, for each module directly in a project folder
    (`name.py`, or `name/` with an `__init__.py`); the first project to hold a name has it.
    Puts the project folders on sys.path, so these modules import without PYTHONPATH."""
    modules: dict[str, Path] = {}
    for folder in project_dirs():
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
        for entry in sorted(folder.iterdir()):
            name = entry.stem if entry.suffix == ".py" else entry.name
            is_module = entry.suffix == ".py" or (entry / "__init__.py").is_file()
            if is_module and name.isidentifier() and name not in modules:
                modules[name] = folder
    return modules


def imported_from(name: str, module_file: str | None, folder: Path) -> bool:
    """Whether module `name` was imported from the project folder's own `name.py` or `name/`,
    not from a module of the same name found first elsewhere."""
    if module_file is None:
        return False
    path = Path(module_file).resolve()
    return path == folder / f"{name}.py" or folder / name in path.parents


def with_config_dir(config_dir: str) -> str:
    """TRAINLAB_CONFIG_PATH's value with `config_dir` put first (for `--config-dir`)."""
    path = Path(config_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(
            f"--config-dir {config_dir}: {path} is not a folder; give your project's conf/ "
            "folder (trainlab init DIR makes one)"
        )
    rest = os.environ.get(ENV, "")
    return os.pathsep.join([str(path), rest]) if rest else str(path)


@contextlib.contextmanager
def environment(config_path: str | None) -> Iterator[None]:
    """TRAINLAB_CONFIG_PATH set to `config_path` (None: left as it is) while the command runs,
    so a sweep's job processes see the same config folders; restored after."""
    before = os.environ.get(ENV)
    if config_path is not None:
        os.environ[ENV] = config_path
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
