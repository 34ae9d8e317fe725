"""The config groups as files: which groups and options there are across trainlab's packaged
conf/ and the user's project folders (project.py), each option's one-line description (its
YAML's first comment line), and `trainlab configs`: list them, show one, copy one into the
project's conf/ to edit (like `tune cp`). Files only: no composition, no torch."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from trainlab import project, rundir
from trainlab.config import CONF_DIR
from trainlab.errors import EXIT_CONFIG, ConfigError, first_line

PRIMARY = "train"  # conf/train.yaml: the run-level keys and the defaults list


@dataclass(frozen=True)
class Option:
    group: str  # "model", "hydra/launcher"; "" for train.yaml itself
    name: str
    path: Path  # the file Hydra reads: a project's before trainlab's
    folder: Path  # the config folder it is in
    shadows: Path | None  # the file of the same name in a later folder, which this replaces

    @property
    def ref(self) -> str:
        return f"{self.group}/{self.name}" if self.group else self.name

    @property
    def from_project(self) -> bool:
        return self.folder != CONF_DIR


def folders() -> list[Path]:
    """Config folders in Hydra's search order: the user's first, trainlab's last."""
    return [*project.config_dirs(), CONF_DIR]


def options() -> dict[str, dict[str, Option]]:
    """group -> option name -> Option, over every config folder (the first holder wins)."""
    found: dict[str, dict[str, Option]] = {}
    for folder in reversed(folders()):  # trainlab's first, so a project's file replaces it
        for path in sorted(folder.rglob("*.yaml")):
            group = path.parent.relative_to(folder).as_posix()
            group = "" if group == "." else group
            if group == "" and path.stem != PRIMARY:
                continue
            before = found.setdefault(group, {}).get(path.stem)
            shadows = None if before is None else (before.shadows or before.path)
            found[group][path.stem] = Option(group, path.stem, path, folder, shadows)
    return {group: dict(sorted(found[group].items())) for group in sorted(found)}


def defaults() -> dict[str, str | None]:
    """group -> the option the primary config's defaults list picks (None: no option)."""
    import yaml

    primary = options()[""][PRIMARY].path
    listed = yaml.safe_load(primary.read_text()).get("defaults") or []
    entries = (item for item in listed if isinstance(item, dict))
    return {
        group: option
        for entry in entries
        for group, option in entry.items()
        if not group.startswith("override ")
    }


def description(path: Path) -> str:
    """An option's first comment line, cut at its first sentence ("..." where it goes on)."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line and line != "# @package _global_"]
    if not lines or not lines[0].startswith("#"):
        return ""
    text = lines[0].lstrip("#").strip()
    head, dot, _ = text.partition(". ")
    if dot:
        return f"{head}."
    goes_on = len(lines) > 1 and lines[1].startswith("#") and not text.endswith(".")
    return f"{text} ..." if goes_on else text


def find(ref: str) -> Option:
    """GROUP/OPTION (or `train`) as a listed Option; ConfigError with the nearest otherwise."""
    group, _, name = ref.removesuffix(".yaml").rpartition("/")
    table = options()
    if group in table and name in table[group]:
        return table[group][name]
    import difflib

    refs = [o.ref for group_options in table.values() for o in group_options.values()]
    near = difflib.get_close_matches(ref, refs, n=1)
    hint = f"; did you mean {near[0]}?" if near else "; trainlab configs lists them"
    if group and group not in table:
        hint = f"; groups: {', '.join(g for g in table if g)}"
    raise ConfigError(f"{ref}: no such config option{hint}")


def copy(option: Option, into: Path, force: bool) -> Path:
    """Write trainlab's (or the project's) YAML of `option` to INTO/<group>/<name>.yaml, never
    over an existing file unless `force`; a reader sees the old file or the whole new one."""
    dest = into / option.group / f"{option.name}.yaml"
    if dest.exists() and not force:
        raise ConfigError(
            f"{option.ref}: {dest} exists; edit it, or pass --force to replace it with "
            f"{'the shadowed' if option.shadows else 'the listed'} version"
        )
    reset = force and option.shadows is not None and dest.resolve() == option.path.resolve()
    text = (option.shadows if reset else option.path).read_bytes()  # reset: trainlab's again
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_atomic(dest, text, replace=force)
    except FileExistsError:  # it appeared meanwhile: nothing is overwritten
        raise ConfigError(f"{option.ref}: {dest} exists; pass --force to replace it") from None
    except OSError as e:  # a full disk, a read-only folder: the old file (if any) is kept
        raise ConfigError(f"{option.ref}: cannot write {dest} ({first_line(e)})") from None
    return dest


def listing(group: str | None) -> str:
    """`trainlab configs [GROUP]`: each option with its description; the default marked, a
    project's own options and replacements said."""
    table = options()
    if group is not None and group.strip("/") not in table:
        raise ConfigError(
            f"{group}: no such config group; groups: {', '.join(g for g in table if g)}"
        )
    picked = defaults()
    lines = []
    for name in [group.strip("/")] if group else [g for g in table if g]:
        lines.append(f"{name}:")
        width = max(len(o) for o in table[name])
        for option in table[name].values():
            marks = []
            if picked.get(name) == option.name:
                marks.append("default")
            if option.from_project:
                marks.append("yours, replaces trainlab's" if option.shadows else "yours")
            mark = f"  ({', '.join(marks)})" if marks else ""
            lines.append(f"  {option.name:<{width}}  {description(option.path)}{mark}")
    if group is None:
        lines += [
            "",
            "trainlab configs GROUP/OPTION          the YAML itself",
            "trainlab configs GROUP/OPTION --copy   into ./conf/, to edit (your conf/ wins)",
        ]
    return "\n".join(lines) + "\n"


def main(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="trainlab configs",
        description="The config groups and their options (trainlab's and your project's): "
        "list them, show one, or copy one into your project's conf/ to edit.",
    )
    parser.add_argument("what", nargs="?", help="a group (model) or an option (model/mlp)")
    parser.add_argument("--copy", action="store_true", help="write the option into --to")
    parser.add_argument(
        "--to", type=Path, default=Path("conf"), help="the config folder to copy into (./conf)"
    )
    parser.add_argument("--force", action="store_true", help="replace a file --copy finds")
    ns = parser.parse_args(args)
    try:
        if ns.what is None or (ns.what.strip("/") in options() and not ns.copy):
            print(listing(ns.what), end="")
            return 0
        option = find(ns.what)
        if not ns.copy:
            print(f"# {option.path}\n{option.path.read_text()}", end="")
            return 0
        dest = copy(option, ns.to, ns.force)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {dest}; trainlab train run here uses it in place of trainlab's {option.ref}")
    return 0
