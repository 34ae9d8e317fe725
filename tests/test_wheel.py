"""The installed product: a wheel built from this checkout, installed into a fresh venv that
borrows this venv's dependencies (no downloads), used from an empty folder as a new user
would: init a project, train its experiment with the user's own model, resume, eval, sweep."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO

# What a build reads: the package, the config groups it copies in (setup.py), the metadata.
SOURCES = ("src", "conf", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def sh(*args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 600):
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(the installed `trainlab` command, an environment without PYTHONPATH or the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: building writes build/ and egg-info into the tree
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.egg-info"))  # fmt: skip
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TRAINLAB"))}
    env["PIP_NO_INDEX"] = "1"  # nothing from the network, ever
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", root / "dist", source, cwd=root, env=env)  # fmt: skip
    (wheel,) = (root / "dist").glob("trainlab-*.whl")
    venv = root / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root, env=env)
    python = venv / "bin" / "python"
    site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                   cwd=root, env=env).stdout.strip())  # fmt: skip
    # This venv's dependencies, as a plain path entry after the new venv's own site-packages:
    # its .pth files (the editable trainlab among them) are not run, so `import trainlab`
    # finds the wheel's.
    (site / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel,
       cwd=root, env=env)  # fmt: skip
    where = sh(python, "-c", "import trainlab; print(trainlab.__file__)", cwd=root, env=env)
    assert where.stdout.strip().startswith(str(site)), where.stdout
    return venv / "bin" / "trainlab", env


@pytest.mark.slow
def test_an_installed_wheel_works_from_an_empty_folder(installed, tmp_path, data_dir):
    trainlab, env = installed
    home = tmp_path / "empty"
    home.mkdir()
    # The packaged config groups: the default run trains from a folder with no conf/ (the
    # MNIST-1D cache comes from the session's data folder: nothing is downloaded).
    out = sh(trainlab, "train", "trainer.max_epochs=1", "trainer.num_threads=1",
             "trainer.limit_train_batches=2", f"paths.data_dir={data_dir}",
             cwd=home, env=env)  # fmt: skip
    assert "test/acc" in out.stdout
    assert (home / "outputs" / "runs").is_dir()
    groups = sh(trainlab, "configs", "model", cwd=home, env=env).stdout
    assert "  mlp " in groups and "site-packages" not in groups

    sh(trainlab, "init", "proj", cwd=home, env=env)
    proj = home / "proj"
    assert "my_model" in sh(trainlab, "configs", "model", cwd=proj, env=env).stdout
    common = ["experiment=example", "trainer.num_threads=1"]
    sh(trainlab, "train", *common, "trainer.max_epochs=2", cwd=proj, env=env)
    (run,) = (proj / "outputs" / "runs").iterdir()
    assert "_target_: models.MyNet" in (run / "config.yaml").read_text()
    sh(trainlab, "resume", run, "trainer.max_epochs=3", cwd=proj, env=env)
    record = json.loads((run / "metrics.json").read_text())
    assert record["epochs"] == 3
    assert "resumed_from" in json.loads((run / "run.json").read_text())["attempts"][-1]
    sh(trainlab, "eval", run, cwd=proj, env=env)
    assert (run / "eval" / "test-best.json").is_file()
    sweep = sh(trainlab, "train", "-m", *common, "trainer.max_epochs=1", "seed=0,1",
               cwd=proj, env=env)  # fmt: skip
    (sweep_dir,) = (proj / "outputs" / "multirun").iterdir()
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / "config.yaml").is_file())
    assert len(jobs) == 2, sweep.stdout + sweep.stderr
    # Every verb wrote under the folder it ran in, and nothing reached the checkout.
    assert sorted(p.name for p in home.iterdir()) == ["outputs", "proj"]
    assert not (REPO / "build").exists()
