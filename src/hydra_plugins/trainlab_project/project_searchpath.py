"""Puts a user's project config folders (trainlab.project.config_dirs) in front of trainlab's
packaged conf/ on Hydra's search path, so their options win and add to the groups. Hydra
loads every plugin it finds into every app in this environment: this one changes only a
search path whose primary config folder is trainlab's."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin


class TrainlabProjectSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from trainlab import project
        from trainlab.config import CONF_DIR

        main = [e for e in search_path.get_path() if e.provider == "main"]
        if not main or _folder(main[0].path) != CONF_DIR.resolve():
            return
        for folder in project.config_dirs():  # highest precedence first: each goes before main
            search_path.prepend("trainlab project", f"file://{folder}", SearchPathQuery("main"))


def _folder(path: str | None) -> Path | None:
    if path is None or path.startswith("pkg://"):
        return None
    return Path(path.removeprefix("file://")).resolve()
