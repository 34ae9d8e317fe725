"""Every command README.md shows is run here, in order, so the docs cannot rot.

`bash` blocks: each command must succeed. `console` blocks: each `$ command` must print the
lines shown under it, compared by `shown_pattern`: text, words and stable numbers exactly, what
differs from run to run masked (wall times, floats, run-folder stamps, absolute paths, the epoch
and step counts of a shrunk run), `...` for lines or text left out. `python`/`yaml` blocks whose
first line is `# <path>` are files the commands after them use, written as shown. What the
commands need besides (iris.csv, photos/) is made here, and bash-block runs are shrunk to tiny
ones; what changes, and why, is in `shrink`. Each `trainlab resume` of a run really resumes one
stopped part-way (`_stopped_like`); the run-folder listing is checked against a real folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import files
from conftest import REPO
from trainlab import checkpoint_files, cli, steps

pytestmark = pytest.mark.slow

PROCESS_THREADS = torch.get_num_threads()  # what a new process on this machine starts with
# Appended to every training command: the test's data, a short run, one thread.
TINY = ["trainer.max_steps=3", "trainer.num_threads=1", "trainer.checkpoint.every_n_steps=2"]
# Values in README that only make sense for a full-length run.
SHRINK = {"scheduler.warmup_steps=200": "scheduler.warmup_steps=1"}


@dataclass
class Command:
    tokens: list[str]
    expected: list[str] | None = None  # console blocks: the lines it prints
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None  # `cd DIR && command`: DIR, under the test's folder

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
    def words(tokens: list[str]) -> list[str]:  # what `cd DIR && ...` and `eval "$(...)"` run
        if tokens[0] == "cd":
            return tokens[3:]
        if tokens[0] == "eval":
            return shlex.split(tokens[1].removeprefix("$(").removesuffix(")"))
        return tokens

    commands = [words(c.tokens) for c in commands_and_files() if isinstance(c, Command)]
    assert {c[1] for c in commands if c[0] == "trainlab"} >= set(cli.VERBS)


def test_every_readme_command_runs(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _user_files(tmp_path)
    ran, resumed, shown_outputs = [], 0, 0
    for item in commands_and_files():
        if isinstance(item, tuple):
            path, text = item
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(text)
            continue
        command = shrink(item, tmp_path, data_dir)
        if command is None:
            continue
        stopped = None
        if _resumes_a_stopped_run(command):
            stopped = _stopped_like(Path(command.tokens[2]), tmp_path, monkeypatch, capsys)
            command = shrink(item, tmp_path, data_dir)  # now names the stopped run
            assert command.tokens[2] == str(stopped.relative_to(tmp_path))
        capsys.readouterr()
        code, printed = run(command, tmp_path, monkeypatch, capsys)
        if command.expected is not None:
            shown = [line for line in command.expected if line.strip()]
            lines = "\n".join(line.rstrip() for line in printed.splitlines() if line.strip())
            assert re.fullmatch(shown_pattern(shown), lines), (
                f"README shows other output for: {item}\n--- shown:\n" + "\n".join(shown)
                + f"\n--- printed:\n{lines[-4000:]}"
            )  # fmt: skip
            failing = any(line.startswith("error:") for line in command.expected)
            assert (code != 0) == failing, f"{item} exited {code}"
            shown_outputs += 1
        else:
            assert code == 0, f"{item}\n{printed[-3000:]}"
        if stopped is not None:
            _assert_resumed(stopped)
            resumed += 1
        ran.append(str(item))
    assert len(ran) >= 50, ran
    consoles = [c for c in commands_and_files() if isinstance(c, Command) and c.expected]
    assert resumed >= 2 and shown_outputs == len(consoles) >= 24, (resumed, shown_outputs)
    _assert_run_folder_as_listed(tmp_path)


def shrink(command: Command, cwd: Path, data_dir: Path) -> Command | None:
    """The command as a tiny run in the test's folder, with the data this test made."""
    tokens = [SHRINK.get(t, t) for t in command.tokens]
    tokens = [_existing_folder(t, cwd) for t in tokens]
    program = tokens[0]
    data = [f"paths.data_dir={data_dir}", f"paths.output_dir={cwd / 'outputs'}"]
    if command.expected is not None:
        return _shown(tokens, command, cwd, data)
    if program in ("./scripts/test.sh",):
        # The suite itself would run here again: set-up and collection only.
        return Command([str(REPO / "scripts/test.sh"), "--collect-only", "-q"], env=command.env)
    if program == "./scripts/train.sh":
        return Command([str(REPO / "scripts/train.sh"), *tokens[1:], *data, *TINY], env=command.env)
    if program == "ssh":
        return None  # a tunnel to another machine
    if program == "pip":
        return None  # installing trainlab: tests/test_wheel.py builds, installs and uses a wheel
    if program == "cd":  # cd DIR && command: the command, run in DIR
        folder, sep, *rest = tokens[1:]
        assert sep == "&&", command
        inner = shrink(Command(rest, env=command.env), cwd, data_dir)
        return inner and Command(inner.tokens, inner.expected, inner.env, cwd=folder)
    if program == "eval":  # eval "$(trainlab completion bash)": the script must print
        return Command(shlex.split(tokens[1].removeprefix("$(").removesuffix(")")))
    if program == "torchrun":
        return _torchrun(tokens, cwd, data + TINY)
    if program != "trainlab":
        raise AssertionError(f"README runs {program}: teach this test how")
    verb = tokens[1]
    if verb == "train" and "--help" not in tokens and "--cfg" not in tokens:
        if "hydra/launcher=slurm" in tokens:
            # No SLURM here: compose the launcher's config (submitit's) instead of submitting.
            singles = [t.split(",")[0] for t in tokens if t not in ("-m", "--multirun")]
            return Command([*singles, *data, "--cfg", "hydra"], env=command.env)
        if "dataset.path=iris.csv" in tokens and not any(t.startswith("name=") for t in tokens):
            # Full length (200 steps, a second): the predictions README shows depend on it.
            return Command([*tokens, *data, "trainer.num_threads=1"], env=command.env)
        tokens += data + TINY
        if "hparams_search=optuna" in tokens or "hydra/sweeper=trainlab_optuna" in tokens:
            tokens.append("hydra.sweeper.n_trials=2")
    if verb == "resume" and any(t.startswith("trainer.max_epochs=") for t in tokens):
        # The tiny runs are bounded by trainer.max_steps, where max_epochs would do nothing
        # (and is refused): the same extension in steps.
        tokens.append("trainer.max_steps=6")
    return Command(tokens, command.expected, command.env)


def _shown(tokens: list[str], command: Command, cwd: Path, data: list[str]) -> Command:
    """A console block's command: run as shown (its output is compared), but for the default
    run, three epochs of its hundred, and the benchmark, on a few hundred samples."""
    program, expected = tokens[0], command.expected
    if program == "./scripts/train.sh":
        short = ["trainer.max_epochs=3", "trainer.num_threads=1"]
        return Command([str(REPO / program), *tokens[1:], *data, *short], expected, command.env)
    if program == ".venv/bin/python" and tokens[1] == "scripts/bench.py":
        args = ["--tiny", "--repeats", "2", "--epochs", "2", "--skip-startup",
                "--out", str(cwd / "bench.json")]  # fmt: skip
        # What --skip-startup leaves out, Lightning's row when it is not installed, and where
        # the results go.
        skipped = ["start-up:"]
        if importlib.util.find_spec("lightning") is None:
            skipped.append("| Lightning")
        expected = [line + " (tiny)" * line.startswith("workload:") for line in expected
                    if not line.startswith(tuple(skipped))]  # fmt: skip
        expected = [re.sub(r"^results: .*", f"results: {cwd / 'bench.json'}", line)
                    for line in expected]  # fmt: skip
        return Command([sys.executable, str(REPO / tokens[1]), *args], expected)
    if program == "trainlab" and tokens[1] == "train":
        return Command([*tokens, *data], expected, command.env)
    if program in ("trainlab", "head"):
        return Command(tokens, expected, command.env)
    raise AssertionError(f"README shows the output of {program}: teach this test how")


# What differs between README's machine and this test's runs: (shown text, what it stands for).
# Each match in a shown line stands for any text of the given pattern; the rest of the line
# must be printed as shown.
MASKS = [
    (r"\.\.\.", lambda text: r".*?"),  # text README leaves out
    (r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}", lambda text: r"[\d_-]{26}"),  # a run's stamp
    # Where outputs/ is: the test's runs print it absolute, under a temporary folder.
    (r"(?<![\w./])(?:/[^\s'\"]*?/)?outputs/", lambda text: r"(?:/[^\s'\"]*?/)?outputs/"),
    (r"(?<==)[^\s,|)]+", re.escape),  # a value the command sets: as shown
    (r"\d{1,3}(?:,\d{3})+", lambda text: r"\d{1,3}(?:,\d{3})*"),  # 119,068 samples/s
    (r"\d+\.\d+", lambda text: rf"\d+\.\d{{{len(text.split('.')[1])}}}"),  # measured: its form
    # The counts a shorter run changes: epochs, steps, checkpoint names; and the port.
    (r"(?<=epoch )\d+|(?<=step )\d+|(?<=step_)\d+|(?<=of )\d+|\d+(?= steps)|(?<=\d/)\d+"
     r"|(?<=:)\d+(?=/)", lambda text: r"\d+"),
]  # fmt: skip
MASK = re.compile("|".join(f"(?P<m{i}>{pattern})" for i, (pattern, _) in enumerate(MASKS)))


def shown_pattern(shown: list[str]) -> str:
    """A regex for the printed lines (non-empty, right-stripped, joined by newlines) that
    README's lines stand for; a line that is only `...` stands for any number of lines."""
    lines = []
    for line in shown:
        if line.strip() == "...":
            lines.append(r"(?:[^\n]*\n)*?")
            continue
        pattern, at = "", 0
        for m in MASK.finditer(line):
            stand_for = MASKS[int(m.lastgroup[1:])][1]
            pattern += re.escape(line[at : m.start()]) + stand_for(m[0])
            at = m.end()
        lines.append(pattern + re.escape(line[at:].rstrip()) + r"\n")
    return "".join(lines).removesuffix(r"\n")


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
        m.setattr(sys, "path", list(sys.path))  # a project folder a command put there
        if command.cwd:
            m.chdir(cwd / command.cwd)
        for key, value in env.items():
            m.setenv(key, value)
        if env.get("PYTHONPATH") == ".":
            m.syspath_prepend(str(cwd))
        # A command starts as a fresh process would: with the machine's thread count, not the
        # one an earlier in-process command set (trainer.num_threads=1); sums depend on it.
        torch.set_num_threads(PROCESS_THREADS)
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
        # Any free port: README's 6006 may be taken on this machine.
        [sys.executable, "-m", "trainlab", *tokens[1:], "--port", "0"], cwd=cwd, text=True,
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


def _resumes_a_stopped_run(command: Command) -> bool:
    """README's `trainlab resume RUN` lines, but for those that extend a finished run."""
    tokens = command.tokens
    return (
        command.expected is None
        and tokens[:2] == ["trainlab", "resume"]
        and not any(t.startswith("trainer.max_") for t in tokens)
    )


def _stopped_like(target: Path, cwd: Path, monkeypatch, capsys) -> Path:
    """A new run with the overrides of the run README's resume names, sent SIGTERM during
    its second step: it saves that step and exits 143, the newest run of its name."""
    overrides = json.loads((cwd / target / "run.json").read_text())["overrides"]
    real, calls = steps.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    before = set((cwd / target).parent.iterdir())
    with monkeypatch.context() as m:
        m.setattr(steps, "train_step", step)
        code = cli.main(["train", *(o for o in overrides if not o.startswith("hydra."))])
    printed = capsys.readouterr()
    assert code == 143, printed.out + printed.err
    (stopped,) = set((cwd / target).parent.iterdir()) - before
    assert json.loads((stopped / "status.json").read_text())["status"] == "interrupted"
    return stopped


def _assert_resumed(run_dir: Path) -> None:
    """The resume continued the stopped run from its checkpoint and finished it."""
    attempts = json.loads((run_dir / "run.json").read_text())["attempts"]
    assert [a.get("resumed_from") for a in attempts] == [None, "step_2.pt"], attempts
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    manifest = checkpoint_files.read_manifest(run_dir / "checkpoints")
    assert manifest["files"][manifest["last"]]["step"] > 2  # it trained on


def _assert_run_folder_as_listed(cwd: Path) -> None:
    """README's listing of a run folder names what the runs here hold: nothing missing, nothing
    left out (eval/, predictions/ and export/ once those verbs wrote them)."""
    (listing,) = [b for lang, b in readme_blocks() if not lang and b.startswith("outputs/runs/<")]
    listed = set()
    for line in listing.splitlines()[1:]:
        if re.match(r"  \S", line):
            listed.update(re.split(r"\s{2,}", line.strip())[0].split())
    held = {
        p.name + ("/" if p.is_dir() else "")
        for run in (cwd / "outputs" / "runs").iterdir()
        for p in run.iterdir()
    }
    assert held == listed, f"not listed: {held - listed}; listed, not in any run: {listed - held}"
