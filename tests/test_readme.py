"""Every command README.md shows is run here, in order, so the docs cannot rot.

`bash` blocks: each command must succeed. `console` blocks: each `$ command` must print the
lines shown under it. `python`/`yaml` blocks whose first line is `# <path>` are files the
commands after them use, written as shown. What the commands need besides (iris.csv, photos/)
is made here, and every run is shrunk to a tiny one; what changes, and why, is in `shrink`.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import files
from conftest import REPO
from trainlab import cli

pytestmark = pytest.mark.slow

# Appended to every training command: the test's data, a short run, one thread.
TINY = ["trainer.max_steps=3", "trainer.num_threads=1", "trainer.checkpoint.every_n_steps=2"]
# Values in README that only make sense for a full-length run.
SHRINK = {"scheduler.warmup_steps=200": "scheduler.warmup_steps=1"}


@dataclass
class Command:
    tokens: list[str]
    expected: list[str] | None = None  # console blocks: the lines it prints
    env: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return shlex.join(self.tokens)


def readme_blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)


def commands_and_files() -> list[Command | tuple[str, str]]:
    """In README order: Commands, and (path, text) for each file a block defines."""
    out: list[Command | tuple[str, str]] = []
    for lang, body in readme_blocks():
        first = body.splitlines()[0] if body else ""
        if lang in ("python", "yaml") and re.fullmatch(r"# [\w./]+\.(py|yaml)", first):
            out.append((first[2:], body))
        elif lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                tokens = shlex.split(line, comments=True)
                if tokens:
                    out.append(_command(tokens))
        elif lang == "console":
            for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
                line, *shown = chunk.rstrip("\n").split("\n")
                out.append(_command(shlex.split(line, comments=True), shown))
    return out


def _command(tokens: list[str], expected: list[str] | None = None) -> Command:
    env = {}
    while "=" in tokens[0] and not tokens[0].startswith(("-", ".")):
        key, value = tokens.pop(0).split("=", 1)
        env[key] = value
    return Command(tokens, expected, env)


def test_readme_shows_commands_of_every_verb():
    shown = {
        c.tokens[1]
        for c in commands_and_files()
        if isinstance(c, Command) and c.tokens[0] == "trainlab"
    }
    assert shown >= {"train", "resume", "eval", "predict", "export", "report", "tensorboard"}


def test_every_readme_command_runs(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _user_files(tmp_path)
    ran = []
    for item in commands_and_files():
        if isinstance(item, tuple):
            path, text = item
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(text)
            continue
        command = shrink(item, tmp_path, data_dir)
        if command is None:
            continue
        capsys.readouterr()
        code, printed = run(command, tmp_path, monkeypatch, capsys)
        if item.expected is not None and command.tokens[0] == "trainlab":
            assert [line for line in printed.splitlines() if line.strip()] == [
                line for line in item.expected if line.strip()
            ], f"README shows other output for: {item}"
            failing = any(line.startswith("error:") for line in item.expected)
            assert (code != 0) == failing, f"{item} exited {code}"
        else:
            assert code == 0, f"{item}\n{printed[-3000:]}"
        ran.append(str(item))
    assert len(ran) >= 50, ran


def shrink(command: Command, cwd: Path, data_dir: Path) -> Command | None:
    """The command as a tiny run in the test's folder, with the data this test made."""
    tokens = [SHRINK.get(t, t) for t in command.tokens]
    tokens = [_existing_folder(t, cwd) for t in tokens]
    program = tokens[0]
    data = [f"paths.data_dir={data_dir}", f"paths.output_dir={cwd / 'outputs'}"]
    if program in ("./scripts/test.sh",):
        # The suite itself would run here again: set-up and collection only.
        return Command([str(REPO / "scripts/test.sh"), "--collect-only", "-q"], env=command.env)
    if program == "./scripts/train.sh":
        return Command([str(REPO / "scripts/train.sh"), *tokens[1:], *data, *TINY], env=command.env)
    if program == ".venv/bin/python" and tokens[1] == "scripts/bench.py":
        args = ["--tiny", "--repeats", "2", "--epochs", "2", "--skip-startup",
                "--out", str(cwd / "bench.json")]  # fmt: skip
        return Command([sys.executable, str(REPO / tokens[1]), *args])
    if program == "ssh":
        return None  # a tunnel to another machine
    if program == "torchrun":
        return _torchrun(tokens, cwd, data + TINY)
    if program != "trainlab":
        raise AssertionError(f"README runs {program}: teach this test how")
    verb = tokens[1]
    if verb == "train" and command.expected is not None:
        return Command([*tokens, *data], command.expected, command.env)
    if verb == "train" and "--help" not in tokens and "--cfg" not in tokens:
        if "hydra/launcher=slurm" in tokens:
            # No SLURM here: compose the launcher's config (submitit's) instead of submitting.
            singles = [t.split(",")[0] for t in tokens if t not in ("-m", "--multirun")]
            return Command([*singles, *data, "--cfg", "hydra"], env=command.env)
        tokens += data + TINY
        if "hparams_search=optuna" in tokens:
            tokens.append("hydra.sweeper.n_trials=2")
    if verb == "resume" and any(t.startswith("trainer.max_epochs=") for t in tokens):
        # The tiny runs are bounded by trainer.max_steps, where max_epochs would do nothing
        # (and is refused): the same extension in steps.
        tokens.append("trainer.max_steps=6")
    if verb == "tensorboard":
        tokens = [*tokens, "--port", "0"]
    return Command(tokens, command.expected, command.env)


def run(command: Command, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    tokens, env = command.tokens, command.env
    if tokens[0] == "trainlab" and tokens[1] == "tensorboard":
        return _tensorboard(tokens, cwd)
    if tokens[0] != "trainlab":
        done = subprocess.run(
            tokens, cwd=cwd, capture_output=True, text=True, timeout=600,
            env=_env(env, cwd),
        )  # fmt: skip
        return done.returncode, done.stdout + done.stderr
    with monkeypatch.context() as m:
        for key, value in env.items():
            m.setenv(key, value)
        if env.get("PYTHONPATH") == ".":
            m.syspath_prepend(str(cwd))
        code = cli.main(tokens[1:])
    captured = capsys.readouterr()
    return code, captured.err if command.expected and code else captured.out + captured.err


def _env(extra: dict[str, str], cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env | {k: str(cwd) if v == "." else v for k, v in extra.items()}


def _existing_folder(token: str, cwd: Path) -> str:
    """outputs/runs/<run> or a folder README names from its own machine (also as the value of
    key=...): the newest folder this test made with the same name ending (-cnn1d-mnist1d); a
    sweep's <stamp>: the newest sweep (an Optuna study's, to continue one)."""
    key, _, value = token.rpartition("=") if token.startswith("hydra.") else ("", "", token)
    found = re.fullmatch(r"(outputs/(?:runs|multirun))/([^/\s]+)(/.*)?", value)
    if not found or (cwd / value).exists():
        return token
    parent, name, rest = found.group(1), found.group(2), found.group(3) or ""
    if not name.startswith("<") and not re.match(r"\d{4}-\d\d-\d\d_", name):
        return token  # a folder the command itself names (hydra.run.dir=outputs/runs/job-1234)
    suffix = "" if name.startswith("<") else re.sub(r"^[\d_-]+", "", name)
    candidates = sorted(
        (p for p in (cwd / parent).iterdir() if p.is_dir() and p.name.endswith(suffix)),
        key=lambda p: p.stat().st_mtime,
    )
    if key == "hydra.sweep.dir":
        candidates = [p for p in candidates if (p / "optuna.db").exists()]
    assert candidates, f"README names {token}, and no earlier command made one like it"
    found_path = f"{parent}/{candidates[-1].name}{rest}"
    return f"{key}={found_path}" if key else found_path


def _torchrun(tokens: list[str], cwd: Path, extra: list[str]) -> Command:
    """N GPUs on one or more nodes -> 2 CPU processes on this machine (gloo)."""
    port = _free_port()
    out = []
    for t in tokens:
        t = re.sub(r"^--nproc_per_node=\d+", "--nproc_per_node=2", t)
        t = re.sub(r"^--nnodes=\d+", "--nnodes=1", t)
        t = re.sub(r"^--rdzv_endpoint=.*", f"--rdzv_endpoint=localhost:{port}", t)
        t = re.sub(r"^trainer\.devices=\d+", "trainer.devices=2", t)
        t = re.sub(r"^hydra\.run\.dir=/shared/(.*)", rf"hydra.run.dir={cwd}/shared/\1", t)
        out.append(t)
    cpu = ["trainer.accelerator=cpu", "trainer.batch_size=64"]
    return Command([sys.executable, "-m", "torch.distributed.run", *out[1:], *extra, *cpu])


def _tensorboard(tokens: list[str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainlab", *tokens[1:]], cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return (0 if "at http://127.0.0.1:" in line else 1), line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_files(cwd: Path) -> None:
    """The data README's examples take for granted the user has."""
    iris = ("sepal_length", "sepal_width", "petal_length", "petal_width")
    files.write_csv(cwd / "iris.csv", rows=150, features=iris, target="species", score=False)
    files.write_csv(cwd / "new_flowers.csv", rows=5, seed=1, features=iris, target="species",
                    score=False)  # fmt: skip
    classes = ("ant", "bee", "cat", "dog", "eel")
    files.write_images(cwd / "photos" / "train", classes=classes, per_class=6)
    files.write_images(cwd / "photos" / "test", classes=classes, per_class=2, seed=1)
