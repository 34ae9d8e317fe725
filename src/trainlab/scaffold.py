"""`trainlab init [DIR]`: a project folder of the user's own, copied from project_template/
(a conf/ with an experiment, a model and a dataset that name the project's own modules,
models.py, spirals.py, a README). Nothing is overwritten: if any file is there already,
nothing is written. No torch import."""

from __future__ import annotations

import sys
from pathlib import Path

from trainlab import rundir
from trainlab.errors import EXIT_CONFIG, first_line

TEMPLATE = Path(__file__).resolve().parent / "project_template"
RENAMED = {"gitignore": ".gitignore"}  # (a dotfile would be left out of the package data)


def files() -> dict[Path, Path]:
    """Project-relative path -> template file."""
    return {
        path.relative_to(TEMPLATE).with_name(RENAMED.get(path.name, path.name)): path
        for path in sorted(TEMPLATE.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def init(folder: Path) -> int:
    wanted = files()
    if folder.exists() and not folder.is_dir():
        return _refuse(f"{folder}: is a file; give a new or empty folder (trainlab init DIR)")
    there = [rel.as_posix() for rel in wanted if (folder / rel).exists()]
    if there:
        return _refuse(
            f"{folder}: already has {', '.join(there)}; init writes a new project and "
            "overwrites nothing: give an empty or new folder (trainlab init DIR)"
        )
    written: list[Path] = []
    try:
        for rel, template in wanted.items():
            dest = folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Never over a file, even one that appeared since the check above.
            rundir.write_atomic(dest, template.read_bytes(), replace=False)
            written.append(dest)
    except OSError as e:  # a file that appeared meanwhile, a full disk, a read-only folder
        for path in written:  # half a project helps nobody: take back what this wrote
            path.unlink(missing_ok=True)
        return _refuse(f"{folder}: cannot write the project ({first_line(e)}); nothing kept")
    where = "" if folder.resolve() == Path.cwd() else f"cd {folder} && "
    print(
        f"wrote a trainlab project in {folder.resolve()}: "
        f"{', '.join(p.relative_to(folder).as_posix() for p in written)}\n"
        f"next: {where}trainlab train experiment=example   (README.md says more)"
    )
    return 0


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_CONFIG
