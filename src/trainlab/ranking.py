"""Which runs are best, from the rows `trainlab report` and a sweep's summary read: each
monitored metric's best completed run with the command that trains it again, and the Pareto
front of several objectives (a multi-objective Optuna study). No torch, no Optuna."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainlab.sweep import Row, Table

# Overrides a single run of the best job leaves out: how the sweep ran it.
NOT_REPRODUCED = ("trainer.resume", "hparams_search", "hydra.", "hydra/", "paths.")


def objective_values(row: Row, objectives: list[str]) -> list[float] | None:
    """A completed run's value of each objective: a metric of its best validation, or one of
    metrics.json's own numbers (parameters, train_s, wall_s)."""
    if row.status != "completed" or not row.results:
        return None
    values = [row.results.get(o, row.results["best"].get(o)) for o in objectives]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        return None
    return values


def pareto_front(
    rows: list[Row], objectives: list[str], directions: list[str], root: Path
) -> Table:
    """The runs no other run beats on every objective (at least as good on all, better on
    one), best first by the first objective."""
    from trainlab.sweep import Table, relative

    sign = [1.0 if d == "minimize" else -1.0 for d in directions]
    scored = [(r, v) for r in rows if (v := objective_values(r, objectives)) is not None]
    costs = [[s * x for s, x in zip(sign, v, strict=True)] for _, v in scored]

    def beaten(i: int) -> bool:
        return any(
            all(a <= b for a, b in zip(other, costs[i], strict=True)) and other != costs[i]
            for other in costs
        )

    front = sorted((i for i in range(len(scored)) if not beaten(i)), key=lambda i: costs[i])
    body = [[relative(scored[i][0].path, root), *scored[i][1]] for i in front]
    return Table(["job", *objectives], body)


def best_command(rows: list[Row]) -> list[str]:
    """For each monitored metric: the best completed run and the command that trains it
    again (its overrides, without the bookkeeping ones)."""
    lines = []
    for monitor in sorted({r.monitor for r in rows if r.monitor}):
        done = [r for r in rows if r.monitor == monitor and r.status == "completed"]
        done = [r for r in done if r.best is not None and math.isfinite(r.best)]
        if not done:
            continue
        pick = min if done[0].mode == "min" else max
        best = pick(done, key=lambda r: r.best)
        kept = [o for o in best.overrides if not o.lstrip("+~").startswith(NOT_REPRODUCED)]
        overrides = " ".join(shlex.quote(o) for o in kept)
        lines.append(
            f"best {monitor}: {best.best:.4f} ({best.path.name}); train it again with: "
            f"trainlab train {overrides}".rstrip()
        )
    return lines
