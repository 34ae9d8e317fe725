"""An Optuna sweeper for trainlab, driving optuna directly (hydra-optuna-sweeper caps optuna
below 3, counts trials per launch and stops the study when a job fails).

Each trial is one job of whatever launcher is configured, in folder `<trial number>_<params>`.
The study lives in the sweep folder (sqlite), so running the same command again with
`hydra.sweep.dir=<that folder>` continues it up to `n_trials` in total: finished trials are
kept, trials a killed sweep left running are run again with the same parameters (their jobs
resume from their checkpoints), and new trials get new folders. A job that fails, diverges or
returns a non-finite value is told to Optuna as a failed trial; the study goes on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class TrainlabOptunaSweeper(Sweeper):
    def __init__(
        self,
        n_trials: int,
        n_jobs: int,
        direction: str | None,
        study_name: str,
        storage: str | None,
        sampler: Any,
        params: dict[str, str] | None = None,
    ) -> None:
        self.n_trials, self.n_jobs, self.direction = n_trials, n_jobs, direction
        self.study_name, self.storage, self.sampler = study_name, storage, sampler
        self.params = dict(params or {})

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from trainlab.config import monitor_mode

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        command = parser.parse_overrides(arguments)
        space_items = [f"{k}={v}" for k, v in self.params.items()]
        swept = parser.parse_overrides(space_items) + [o for o in command if o.is_sweep_override()]
        space = {o.get_key_element(): distribution(o) for o in swept}
        fixed = [o.input_line for o in command if not o.is_sweep_override()]
        if not space:
            raise ValueError("hydra.sweeper.params is empty: nothing to search over")

        direction = self.direction or (
            "minimize" if monitor_mode(self.config.trainer) == "min" else "maximize"
        )
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage or f"sqlite:///{self.sweep_dir / 'optuna.db'}",
            sampler=self.sampler,
            direction=direction,
            load_if_exists=True,
        )
        running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        finished = sum(t.state.is_finished() for t in study.trials)
        log.info(
            f"optuna study {self.study_name!r} ({direction} {self.config.trainer.monitor}): "
            f"{finished} of {self.n_trials} trials done, {len(running)} to run again"
        )
        # A trial a killed sweep left running: same parameters, same folder; it resumes.
        self.exhausted = False
        for trial in running:
            overrides = [*fixed, *_assignments(trial.params, space), "trainer.resume=auto"]
            self._run(study, [trial], [overrides])
        while (left := self.n_trials - sum(t.state.is_finished() for t in study.trials)) > 0:
            if self.exhausted:
                log.info("the sampler has tried its whole search space")
                break
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            self._run(study, trials, [[*fixed, *_assignments(t.params, space)] for t in trials])
        best = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if best:
            log.info(
                f"best trial: #{study.best_trial.number} {study.best_value} {study.best_params}"
            )

    def _run(self, study: Any, trials: list[Any], overrides: list[list[str]]) -> None:
        """Launch one job per trial (job number = trial number) and tell Optuna the results."""
        import optuna

        for trial, job in zip(trials, overrides, strict=True):
            log.info(f"trial #{trial.number}: {' '.join(job)}")
        # Job numbers must be consecutive within a launch: launch runs of consecutive trials.
        start = 0
        while start < len(trials):
            end = start + 1
            while end < len(trials) and trials[end].number == trials[end - 1].number + 1:
                end += 1
            returns = self.launcher.launch(
                overrides[start:end], initial_job_idx=trials[start].number
            )
            for trial, ret in zip(trials[start:end], returns, strict=True):
                value = ret._return_value if ret.status.name == "COMPLETED" else None
                finite = isinstance(value, int | float) and math.isfinite(value)
                if not finite:
                    log.warning(
                        f"trial #{trial.number} failed (returned {value}); the study goes on"
                    )
                try:
                    if finite:
                        study.tell(trial.number, float(value))
                    else:
                        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                except RuntimeError as e:
                    # A sampler that has exhausted its space (BruteForce, Grid) calls
                    # study.stop(), which only works inside study.optimize; the result is
                    # stored before that, so this only means: no more trials.
                    if "Study.stop" not in str(e):
                        raise
                    self.exhausted = True
            start = end


def distribution(override: Override) -> Any:
    """The Optuna distribution for a sweep in Hydra's override grammar: choice(...) ->
    categorical, range(a, b, step) -> int/float with a step, interval(a, b) -> int/float,
    tag(log, ...) -> log scale."""
    import optuna.distributions as d

    sweep, key = override.value(), override.get_key_element()
    log_scale = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, ChoiceSweep):
        return d.CategoricalDistribution(
            [Override._get_value_element_as_str(v) for v in sweep.list]
        )
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return d.IntDistribution(start, stop - 1, step=step, log=log_scale)
        return d.FloatDistribution(start, stop - step, step=step)
    if isinstance(sweep, IntervalSweep):
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return d.IntDistribution(sweep.start, sweep.end, log=log_scale)
        return d.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise ValueError(
        f"hydra.sweeper.params.{key}={override.input_line}: not a search space; use "
        "choice(...), range(start, stop, step) or interval(low, high), optionally tag(log, ...)"
    )


def _assignments(params: dict[str, Any], space: dict[str, Any]) -> list[str]:
    return [f"{key}={params[key]!r}" if isinstance(params[key], float) else f"{key}={params[key]}"
            for key in space]  # fmt: skip
