"""Sweeps: the job folder names, the summary a sweep writes of itself (a Hydra callback), and
`trainlab report`, the same table for any folder of runs. No torch import: it reads only the
small JSON/YAML records each run folder holds."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from trainlab import ranking
from trainlab.errors import ConfigError
from trainlab.lock import in_use
from trainlab.rundir import read_json, write_record

FAILED = ("failed", "diverged", "interrupted", "pruned")
ENDED_WELL = ("completed", "pruned")  # a pruned trial is one the study chose to stop
MAX_DIRNAME = 60
# Overrides that say how a job ran, not what it trains: never a swept column, never in the
# command line that reproduces a run.
BOOKKEEPING = ("trainer.resume", "trainer.progress", "paths.", "hydra.")


def job_dirname(override_dirname: str) -> str:
    """A job folder's name from its overrides: only safe characters, at most MAX_DIRNAME long
    (a cut name ends in a hash of the whole, so two long names never collide)."""
    safe = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", override_dirname).strip("_") or "job"
    if len(safe) <= MAX_DIRNAME:
        return safe
    digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:8]
    return f"{safe[: MAX_DIRNAME - 9]}-{digest}"


OmegaConf.register_new_resolver("trainlab.dirname", job_dirname, replace=True)


def common_override_keys(task_overrides: list[str]) -> list[str]:
    """The keys of the command-line overrides that every job shares (the non-sweep ones)."""
    parsed = OverridesParser.create().parse_overrides(task_overrides)
    return [o.key_or_group for o in parsed if not o.is_sweep_override()]


# ---- one row per run folder ----


@dataclass
class Row:
    path: Path
    values: dict[str, str] = field(default_factory=dict)  # override key -> value (swept ones)
    overrides: list[str] = field(default_factory=list)  # the job's command line, as given
    status: str = "unknown"
    reason: str = ""
    monitor: str = ""
    best: float | None = None
    final: float | None = None
    test: float | None = None
    epochs: int | None = None
    wall_s: float | None = None
    mode: str = ""
    results: dict[str, Any] = field(default_factory=dict)  # metrics.json, when it is sound


def read_run(path: Path) -> Row:
    """What a run folder says about itself, whatever state it was left in."""
    row = Row(path)
    status = _json(path / "status.json")
    row.status, row.reason = status.get("status", "unknown"), status.get("reason", "")
    if row.status == "running" and not in_use(path):
        # A running run holds the folder's lock; this one's process is gone without a word
        # (kill -9, or a full disk at its last record).
        row.status, row.reason = "interrupted", "the process is gone (killed?)"
    run = _json(path / "run.json")
    overrides = _yaml(path / ".hydra" / "overrides.yaml") or run.get("overrides", [])
    row.overrides = [str(o) for o in overrides]
    for item in overrides:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if not (key.startswith(BOOKKEEPING) or key in BOOKKEEPING):
            row.values[key] = value
    # What the run's config says, if it still says it: a report reads damaged folders too.
    trainer = (_yaml(path / "config.yaml") or {}).get("trainer")
    row.monitor = (
        str(trainer["monitor"]) if isinstance(trainer, dict) and "monitor" in trainer else ""
    )
    metrics = _metrics(path / "metrics.json")
    if metrics:
        row.results, row.monitor, row.mode = metrics, metrics["monitor"], metrics.get("mode", "")
        row.best = metrics["best"].get(row.monitor)
        row.final = metrics["final"].get(row.monitor)
        row.test = metrics["test"].get("test/" + row.monitor.partition("/")[2])
        row.epochs = metrics["epochs"]
        row.wall_s = metrics.get("wall_s")
    else:  # unfinished: what the committed checkpoints say
        manifest = _json(path / "checkpoints" / "manifest.json")
        files = manifest.get("files", {})
        if manifest.get("best") in files:
            row.best = files[manifest["best"]].get("metric")
        if manifest.get("last") in files:
            row.epochs = files[manifest["last"]].get("epoch")
    attempts = run.get("attempts", [])
    if row.wall_s is None and attempts and status.get("updated"):
        start = datetime.fromisoformat(attempts[0]["started"])
        row.wall_s = (datetime.fromisoformat(status["updated"]) - start).total_seconds()
    return row


def find_runs(root: Path) -> list[Path]:
    """Every run folder under root (a folder with status.json or run.json), in path order."""
    marks = {p.parent for name in ("status.json", "run.json") for p in root.rglob(name)}
    return sorted(p for p in marks if ".hydra" not in p.parts)


# ---- the table ----


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(self.header)
        writer.writerows([["" if v is None else v for v in r] for r in self.rows])
        return out.getvalue()


def table(
    rows: list[Row], root: Path, sort: str | None = None, group_by: str | None = None
) -> Table:
    """One row per run with only the override keys that vary across `rows`; with group_by,
    one row per configuration (every varying key but that one) with mean ± std."""
    keys = varying_keys(rows)
    # One best/final/test group of columns per monitored metric: runs of different tasks
    # (val/acc, val/loss) are never ranked against each other.
    monitors = sorted({r.monitor for r in rows if r.monitor}) or ["monitor"]
    if group_by:
        return _grouped(rows, [k for k in keys if k != group_by], group_by, monitors[0], sort)
    header = ["job", *keys, "status", *[h for m in monitors for h in _metric_header(m)]]
    header += ["epochs", "time_s"]
    body = []
    for r in rows:
        status = f"{r.status}: {r.reason}" if r.reason and r.status in FAILED else r.status
        wall = None if r.wall_s is None else f"{r.wall_s:.1f}"
        values = [r.values.get(k) for k in keys]
        scores = [v for m in monitors for v in (
            (r.best, r.final, r.test) if r.monitor == m or len(monitors) == 1 else (None,) * 3
        )]  # fmt: skip
        body.append([relative(r.path, root), *values, status, *scores, r.epochs, wall])
    return Table(header, _sorted(header, body, sort))


def _metric_header(metric: str) -> list[str]:
    test = f"test {metric.partition('/')[2]}" if "/" in metric else "test"
    return [f"best {metric}", f"final {metric}", test]


def varying_keys(rows: list[Row]) -> list[str]:
    keys = sorted({k for r in rows for k in r.values})
    return [k for k in keys if len({r.values.get(k) for r in rows}) > 1]


def _grouped(rows: list[Row], keys: list[str], over: str, metric: str, sort: str | None) -> Table:
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault(tuple(r.values.get(k) for k in keys), []).append(r)
    header = [*keys, f"n ({over})", "completed", *_metric_header(metric), "time_s"]
    body = []
    for config, members in groups.items():
        done = [m for m in members if m.status == "completed"]
        stats = [_spread([getattr(m, name) for m in done]) for name in ("best", "final", "test")]
        wall = _spread([m.wall_s for m in done], 1)
        body.append([*config, len(members), len(done), *stats, wall])
    return Table(header, _sorted(header, body, sort))


def _spread(values: list[float | None], digits: int = 4) -> str | None:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.{digits}f} ± {std:.{digits}f}"


def _sorted(header: list[str], body: list[list[Any]], sort: str | None) -> list[list[Any]]:
    if not sort:
        return body
    name, reverse = sort.lstrip("-"), sort.startswith("-")
    matches = [i for i, h in enumerate(header) if h == name]
    matches = matches or [i for i, h in enumerate(header) if h.split(" ")[0] == name]
    if not matches:
        raise SystemExit(f"error: --sort {sort}: no such column; columns: {', '.join(header)}")
    i = matches[0]  # `best` with several monitors: the first; `best val/loss` names another
    present = [r for r in body if r[i] is not None]
    missing = [r for r in body if r[i] is None]  # always last
    return sorted(present, key=lambda r: _sort_key(r[i]), reverse=reverse) + missing


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers (and override values that are numbers, 1e-3 or 0.01) by value, before text."""
    if isinstance(value, int | float):
        return (0, float(value))
    text = str(value)
    try:
        return (0, float(text.split(" ")[0]))  # "0.91 ± 0.01" by its mean
    except ValueError:
        return (1, text)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def _json(path: Path) -> dict[str, Any]:
    try:
        record = read_json(path) if path.is_file() else {}
    except ConfigError:
        return {}  # a half-written record of a killed run: report what else is there
    return record if isinstance(record, dict) else {}


def _metrics(path: Path) -> dict[str, Any] | None:
    """metrics.json if it is what a run writes; otherwise a warning naming the file, and the
    row is made from the folder's other records."""
    if not path.is_file():
        return None
    try:
        metrics = read_json(path)
        ok = isinstance(metrics, dict) and isinstance(metrics.get("monitor"), str)
        ok = ok and all(isinstance(metrics.get(k), dict) for k in ("best", "final", "test"))
        best = metrics["best"].get(metrics["monitor"]) if ok else None
        ok = ok and isinstance(best, int | float) and isinstance(metrics.get("epochs"), int)
        if not ok:
            raise ConfigError("not the record a run writes (monitor, best, final, test)")
    except ConfigError as e:
        print(f"warning: skipping {path}: {e}", file=sys.stderr)
        return None
    return metrics


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None


# ---- the sweep's own summary, and `trainlab report` ----


def write_summary(
    sweep_dir: Path, objectives: list[str] | None = None, directions: list[str] | None = None
) -> tuple[Table, list[Row]]:
    """summary.md and summary.csv at the sweep's root; with several objectives, summary.md
    also has the Pareto front."""
    rows = [read_run(p) for p in find_runs(sweep_dir)]
    result = table(rows, sweep_dir)
    text = result.markdown()
    if objectives and directions and len(objectives) > 1:
        front = ranking.pareto_front(rows, objectives, directions, sweep_dir)
        goals = ", ".join(f"{d} {o}" for o, d in zip(objectives, directions, strict=True))
        text += f"\n## Pareto front ({goals})\n\n" + front.markdown()
    write_record(sweep_dir / "summary.md", text)
    write_record(sweep_dir / "summary.csv", result.csv())
    return result, rows


class SweepSummaryCallback(Callback):
    """Writes summary.csv and summary.md at the sweep's root after every job, and at the end
    prints the table and exits non-zero naming the jobs that failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Job folders are named by what varies: drop the overrides every job shares.
        common = common_override_keys(list(config.hydra.overrides.task))
        if common:
            with read_write(config.hydra), open_dict(config.hydra):
                exclude = list(config.hydra.job.config.override_dirname.exclude_keys) + common
                config.hydra.job.config.override_dirname.exclude_keys = exclude
                listed = ",".join(f"'{k}'" for k in exclude)
                config.hydra.overrides.hydra.append(
                    f"hydra.job.config.override_dirname.exclude_keys=[{listed}]"
                )

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        multirun = config.hydra.mode is not None and str(config.hydra.mode).endswith("MULTIRUN")
        # A job of several processes (SLURM tasks): its rank 0 alone writes.
        if multirun and os.environ.get("RANK", "0") == "0":
            write_summary(
                Path(config.hydra.sweep.dir), *objectives_of(config.hydra, config.trainer.monitor)
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        result, rows = write_summary(
            sweep_dir, *objectives_of(config.hydra, config.trainer.monitor)
        )
        print(f"\nsweep summary ({sweep_dir / 'summary.md'}):\n\n{result.markdown()}")
        for line in ranking.best_command(rows):
            print(line)
        # "running": a job of another worker of the same study, still going (its lock is held).
        failed = [r for r in rows if r.status not in (*ENDED_WELL, "running")]
        running = [r for r in rows if r.status == "running"]
        if running:
            print(f"{len(running)} job(s) still running in other processes")
        if failed:
            names = ", ".join(f"{relative(r.path, sweep_dir)} ({r.status})" for r in failed)
            print(
                f"error: {len(failed)} of {len(rows)} jobs did not complete: {names}",
                file=sys.stderr,
            )
            raise SystemExit(1)


def report(root: Path, sort: str | None, group_by: str | None, fmt: str) -> int:
    if not root.is_dir():
        print(f"error: {root}: no such folder", file=sys.stderr)
        return 2
    rows = [read_run(p) for p in find_runs(root)]
    if not rows:
        print(
            f"error: {root}: no run folders (with status.json or run.json) under it",
            file=sys.stderr,
        )
        return 2
    result = table(rows, root, sort=sort, group_by=group_by)
    print(result.markdown() if fmt == "md" else result.csv(), end="")
    if fmt == "md":
        for line in ranking.best_command(rows):
            print(f"\n{line}")
    return 0


def objectives_of(hydra_cfg: DictConfig, monitor: str) -> tuple[list[str] | None, list[str] | None]:
    """A trainlab Optuna sweep's objectives and directions; (None, None) for other sweeps."""
    sweeper = hydra_cfg.get("sweeper")
    if sweeper is None or "objectives" not in sweeper:
        return None, None
    from trainlab import studies

    objectives = studies.objectives_of(sweeper, monitor)
    return objectives, studies.directions_of(sweeper, objectives)
