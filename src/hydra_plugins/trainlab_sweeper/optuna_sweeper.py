"""An Optuna sweeper for trainlab, driving optuna directly (hydra-optuna-sweeper caps optuna
below 3, counts trials per launch and stops the study when a job fails).

Each trial is one job of whatever launcher is configured, in folder `<trial number>_<params>`.
The study lives in `hydra.sweeper.storage` (default: SQLite in the sweep folder), so running
the same command again with `hydra.sweep.dir=<that folder>` continues it up to `n_trials` in
total, and several processes started with the same sweep folder and storage share it: each
asks for trials until the study has n_trials (trainlab.studies.Claims keeps them apart). The
sampler is made afresh per trial, seeded by the trial's number, so a continued study proposes
new points. A trial a killed worker left running resumes in its folder, from its checkpoint,
once; killed again it is failed. A job that fails, diverges or returns a non-finite value is a
failed trial, a pruned one a pruned trial; the study goes on.
"""

from __future__ import annotations

import difflib
import logging
from itertools import product
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from trainlab import studies
from trainlab.errors import ConfigError, first_line

log = logging.getLogger(__name__)


class TrainlabOptunaSweeper(Sweeper):
    def __init__(
        self,
        n_trials: int,
        n_jobs: int,
        direction: Any,
        study_name: str,
        storage: str | None,
        sampler: Any,
        objectives: list[str] | None = None,
        pruner: Any = None,
        params: dict[str, str] | None = None,
        model_params: dict[str, dict[str, str]] | None = None,
    ) -> None:
        # The sampler is made per trial from its config (setup); this instance goes unused.
        self.n_trials, self.n_jobs, self.study_name = n_trials, n_jobs, study_name
        self.storage_url, self.pruner = storage, pruner
        self.params, self.model_params = dict(params or {}), dict(model_params or {})

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except ConfigError as e:
            from trainlab.rundir import exit_config_error

            exit_config_error(str(e))

    def _sweep(self, arguments: list[str]) -> None:
        import optuna

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        command = parser.parse_overrides(arguments)
        params = dict(self.params)
        model = self.config.hydra.runtime.choices.get("model")
        if not any(o.get_key_element() == "model" for o in command if o.is_sweep_override()):
            params |= self.model_params.get(model) or {}  # a searched model: only the shared keys
        try:
            space_items = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
        except Exception as e:
            raise ConfigError(f"hydra.sweeper.params: {first_line(e)}") from None
        # A sweep on the command line replaces the space's entry for the same key.
        swept = {o.get_key_element(): o for o in space_items}
        swept |= {o.get_key_element(): o for o in command if o.is_sweep_override()}
        space = {key: distribution(o) for key, o in swept.items()}
        self.fixed = [o.input_line for o in command if not o.is_sweep_override()]
        if not space:
            raise ConfigError(
                "hydra.sweeper.params is empty: nothing to search over; pick a space "
                "(hparams_search=...) or sweep keys on the command line"
            )
        self._check_keys(space, swept)
        sweeper = self.config.hydra.sweeper
        self.objectives = studies.objectives_of(sweeper, self.config.trainer.monitor)
        directions = studies.directions_of(sweeper, self.objectives)
        if self.pruner is not None and len(self.objectives) > 1:
            raise ConfigError(
                "hydra.sweeper.pruner: Optuna prunes single-objective studies only; set "
                f"hydra.sweeper.pruner=null or one objective (not {', '.join(self.objectives)})"
            )
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its lines say what ours say
        if self.storage_url is None or self.storage_url.startswith(studies.JOURNAL):
            self.sweep_dir.mkdir(parents=True, exist_ok=True)  # the study is stored there
        where = studies.storage(self.storage_url, self.sweep_dir)
        make = studies.sampler_factory(sweeper.sampler, int(self.config.seed))
        study = optuna.create_study(
            study_name=self.study_name, storage=where, directions=directions,
            sampler=studies.seeded_per_trial(make), pruner=self.pruner, load_if_exists=True,
        )  # fmt: skip
        self._check_study(study, directions)
        self.where, self.study_id = where, where.get_study_id_from_name(self.study_name)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.claims, self.exhausted = studies.Claims(self.sweep_dir), False
        goals = ", ".join(f"{d} {o}" for d, o in zip(directions, self.objectives, strict=True))
        log.info(
            f"optuna study {self.study_name!r} ({goals}): {len(study.trials)} of "
            f"{self.n_trials} trials in it"
        )
        while not self.exhausted:
            with self.claims.asking():
                batch = self._resumable(study, space) + self._new(study, space)
            if not batch:
                break
            self._run(study, batch)
        if self.exhausted:
            log.info("the sampler has tried its whole search space")
        self._log_best(study)

    def _check_keys(self, space: dict[str, Any], swept: dict[str, Override]) -> None:
        """Before any trial runs, in one line: every key of the space is in the composed config,
        for each choice of a config group the space searches (model=choice(mlp,cnn1d)); and a
        value of each dimension composes (an interval of floats for an integer key does not)."""
        choices = self.config.hydra.runtime.choices
        groups = [k for k in space if k in choices]
        options = [space[g].choices for g in groups]
        keys = [k for k in space if k not in choices and not k.startswith("+")]
        loader = self.hydra_context.config_loader
        for combination in product(*options):
            picked = [f"{g}={v}" for g, v in zip(groups, combination, strict=True)]
            cfg = self.config
            if picked:
                cfg = loader.load_sweep_config(self.config, [*self.fixed, *picked])
            for key in keys:
                if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
                    raise ConfigError(_not_a_key(cfg, key, picked))
            values = {k: _assignments({k: _some_value(space[k])})[0] for k in keys}
            if self._compose_error([*picked, *values.values()]) is None:
                continue  # one compose for every key; only a failure looks for which
            for key in keys:
                error = self._compose_error([*picked, values[key]])
                if error is None:
                    continue
                why, hint = first_line(error.__cause__ or error), ""
                if "interval(" in swept[key].input_line and "integer" in why.lower():
                    hint = "; an interval of integers is int(interval(low, high))"
                raise ConfigError(
                    f"{swept[key].input_line}: a trial's value "
                    f"{values[key].partition('=')[2]} does not fit ({why}){hint}"
                )

    def _compose_error(self, overrides: list[str]) -> Exception | None:
        """What composing a job with these overrides raises, or None."""
        try:
            self.hydra_context.config_loader.load_sweep_config(
                self.config, [*self.fixed, *overrides]
            )
        except Exception as e:
            return e
        return None

    def _check_study(self, study: Any, directions: list[str]) -> None:
        """A study continued with what it was made with: its directions, its sweep folder."""
        made = [d.name.lower() for d in study.directions]
        if made != directions:
            raise ConfigError(
                f"optuna study {self.study_name!r} was made to {', '.join(made)}; this sweep "
                f"would {', '.join(directions)} {', '.join(self.objectives)}. Continue it as it "
                "was, or start a new study (hydra.sweeper.study_name=...)"
            )
        home = study.user_attrs.get("sweep_dir")
        if home is None:
            study.set_user_attr("sweep_dir", str(self.sweep_dir.absolute()))
        elif Path(home) != self.sweep_dir.absolute():
            raise ConfigError(
                f"optuna study {self.study_name!r} belongs to the sweep folder {home}, where its "
                f"trials' folders are; join it with hydra.sweep.dir={home}, or start a new study "
                "(hydra.sweeper.study_name=...)"
            )

    def _resumable(self, study: Any, space: dict[str, Any]) -> list[tuple[Any, list[str]]]:
        """Trials a worker that is gone left running (their claim is free): resumed in their
        folder with their parameters, once; failed if that was done before, or if the worker
        died before the trial had its parameters."""
        import optuna

        batch = []
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if not self.claims.take(trial.number):
                continue  # another worker runs it
            attempts = trial.system_attrs.get(studies.ATTEMPTS, 1)
            if attempts >= 2 or not set(space) <= set(trial.params):
                why = "killed twice" if attempts >= 2 else "its worker died before it started"
                log.warning(f"trial #{trial.number}: {why}; failed")
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                self.claims.release(trial.number)
                continue
            self._attempt(trial.number, attempts + 1)
            log.info(f"trial #{trial.number}: its worker is gone; resuming it in its folder")
            batch.append((trial, [*self.fixed, *_assignments(trial.params), "trainer.resume=auto"]))
        return batch

    def _new(self, study: Any, space: dict[str, Any]) -> list[tuple[Any, list[str]]]:
        """New trials, as many as n_jobs, while the study has fewer than n_trials."""
        import optuna

        waiting = (optuna.trial.TrialState.WAITING,)
        taken = len(study.trials) - len(study.get_trials(deepcopy=False, states=waiting))
        batch = []
        for _ in range(min(self.n_jobs, self.n_trials - taken)):
            trial = study.ask(space)
            self.claims.take(trial.number)  # under the ask lock: nobody else can have it
            self._attempt(trial.number, 1)
            batch.append((trial, [*self.fixed, *_assignments(trial.params)]))
        return batch

    def _attempt(self, number: int, attempts: int) -> None:
        trial_id = self.where.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.where.set_trial_system_attr(trial_id, studies.ATTEMPTS, attempts)

    def _run(self, study: Any, batch: list[tuple[Any, list[str]]]) -> None:
        """Launch one job per trial (job number = trial number) and tell Optuna the results."""
        for trial, job in batch:
            log.info(f"trial #{trial.number}: {' '.join(job)}")
        # Job numbers must be consecutive within a launch: launch runs of consecutive trials.
        start = 0
        while start < len(batch):
            end = start + 1
            while end < len(batch) and batch[end][0].number == batch[end - 1][0].number + 1:
                end += 1
            part = batch[start:end]
            try:
                returns = self.launcher.launch([j for _, j in part], part[0][0].number)
            except Exception as e:  # e.g. a value the config refuses when the job composes
                log.error(f"trials #{part[0][0].number}-{part[-1][0].number}: {first_line(e)}")
                returns = [None] * len(part)
            for (trial, _), ret in zip(part, returns, strict=True):
                self._tell(study, trial.number, ret)
            start = end

    def _tell(self, study: Any, number: int, ret: Any) -> None:
        import optuna

        State = optuna.trial.TrialState
        status, values = "failed", None
        if ret is not None:
            run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
            status, values = studies.outcome(run_dir, self.objectives)
        try:
            if values is not None:
                study.tell(number, values if len(values) > 1 else values[0])
            elif status == "pruned":
                study.tell(number, state=State.PRUNED)
            else:
                log.warning(f"trial #{number} {status}; the study goes on")
                study.tell(number, state=State.FAIL)
        except RuntimeError as e:
            # A sampler that has exhausted its space (BruteForce, Grid) calls study.stop(),
            # which only works inside study.optimize; the result is stored before that, so
            # this only means: no more trials.
            if "Study.stop" not in str(e):
                raise
            self.exhausted = True
        finally:
            self.claims.release(number)

    def _log_best(self, study: Any) -> None:
        import optuna

        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            return
        for best in study.best_trials:
            log.info(f"best trial: #{best.number} {best.values} {best.params}")


_ABSENT = object()


def _some_value(dist: Any) -> Any:
    """A value a trial may get from the distribution (its low end, or first choice)."""
    return dist.choices[0] if hasattr(dist, "choices") else dist.low


def _not_a_key(cfg: DictConfig, key: str, picked: list[str]) -> str:
    """`model.channels` is not a key of model=mlp: say so, with what it has."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    keys = sorted(str(k) for k in node) if isinstance(node, DictConfig) else []
    group = key.split(".")[0]
    choice = cfg.hydra.runtime.choices.get(group) if "hydra" in cfg else None
    which = next((p for p in picked if p.startswith(f"{group}=")), None)
    which = which or (f"{group}={choice}" if choice else "the config")
    near = difflib.get_close_matches(name, keys, n=1)
    fix = f"did you mean {parent}.{near[0]}?" if near else "search a key it has"
    if group == "model":
        fix += " The shipped space follows the model (hparams_search=optuna)"
    return (
        f"hydra.sweeper.params: {key} is not a key of {which} ({parent or 'it'} has: "
        f"{', '.join(keys) or 'none'}); {fix}; to replace the space, see README, "
        "Hyperparameter search"
    )


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
    raise ConfigError(
        f"hydra.sweeper.params.{key}={override.input_line}: not a search space; use "
        "choice(...), range(start, stop, step) or interval(low, high), optionally tag(log, ...)"
    )


def _assignments(params: dict[str, Any]) -> list[str]:
    return [f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
            for key, value in params.items()]  # fmt: skip
