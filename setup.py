"""One build step beyond pyproject.toml: the checkout's conf/ (where developers edit the config
groups) is copied into the built package as trainlab/conf/, so a wheel carries its configs.
An editable install skips the copy and reads conf/ in place (trainlab.config.CONF_DIR)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not (CONF / "train.yaml").is_file():
            raise SystemExit(f"build: {CONF}/train.yaml is missing; build from a checkout")
        target = Path(self.build_lib) / "trainlab" / "conf"
        for path in sorted(CONF.rglob("*.yaml")):
            out = target / path.relative_to(CONF)
            self.mkpath(str(out.parent))
            self.copy_file(str(path), str(out))


setup(cmdclass={"build_py": BuildWithConfigs})
