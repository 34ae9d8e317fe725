"""The Optuna studies of trainlab's sweeper (hydra_plugins/trainlab_sweeper), for the sweeper
and for the jobs it launches: where a study is stored, the claims that let many workers share
one study without running a trial twice, the sampler seeded per trial, the objectives a trial
is told with, and a trial's pruning reports. Optuna is imported only when a study is used; no
torch here.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainlab import lock
from trainlab.config import metric_mode
from trainlab.errors import ConfigError, TrainlabError
from trainlab.rundir import read_json

SWEEPER = "hydra_plugins.trainlab_sweeper.optuna_sweeper.TrainlabOptunaSweeper"
JOURNAL = "journal:"
CLAIMS = ".study"  # in the sweep folder: the ask lock and one lock per trial being run
ATTEMPTS = "trainlab:attempts"  # a trial's system attribute: launches of it so far
RECORD_KEYS = ("parameters", "train_s", "wall_s")  # objectives besides the validated metrics


class Pruned(TrainlabError):
    """The study's pruner stopped this trial (it keeps its checkpoints)."""


def storage(url: str | None, sweep_dir: Path) -> Any:
    """The Optuna storage of `hydra.sweeper.storage`: null = SQLite in the sweep folder (one
    machine); journal:<file> = Optuna's journal file (a relative file is in the sweep folder;
    for a shared filesystem); any other URL goes to SQLAlchemy (postgresql://, mysql://,
    sqlite:///...: a cluster's database)."""
    import optuna

    if url is None:
        url = f"sqlite:///{sweep_dir / 'optuna.db'}"
    if url.startswith(JOURNAL):
        path = Path(url.removeprefix(JOURNAL)).expanduser()
        path = path if path.is_absolute() else sweep_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    # Workers writing one SQLite file wait for each other instead of failing at once.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        return _rdb_storage(url, engine)
    except ImportError as e:
        raise ConfigError(
            f"hydra.sweeper.storage={url}: its database driver is not installed ({e}); for "
            "PostgreSQL: pip install 'trainlab[postgres]'"
        ) from None
    except Exception as e:  # sqlalchemy's ArgumentError, OperationalError, ...
        raise ConfigError(f"hydra.sweeper.storage={url}: cannot open it ({_first(e)})") from None


def _rdb_storage(url: str, engine: dict[str, Any], attempts: int = 5) -> Any:
    """RDBStorage, which creates its tables when the database has none. Workers started together
    on an empty database race to create them and all but one fail (PostgreSQL: a unique
    violation on the new table's type); the tables are there then, so a failed open is tried
    again, a moment later."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(1, attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.2 * attempt)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def _first(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [error.__class__.__name__])[0]


# ---- claims: which worker runs which trial ----


class Claims:
    """Locks in <sweep>/.study that keep workers apart: `asking()` is held while a worker looks
    at the study and asks for trials (so n_trials is never overshot and a trial asked for a
    moment ago is never taken for a dead one); `take(number)` is held by the worker running
    that trial for as long as it runs. A RUNNING trial whose lock nobody holds was left by a
    worker that is gone. flock, like the run folders: the kernel drops it with its process."""

    def __init__(self, sweep_dir: Path) -> None:
        self.root = sweep_dir / CLAIMS
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def asking(self) -> Iterator[None]:
        lock.own(self.root, wait=True)
        try:
            yield
        finally:
            lock.disown(self.root)

    def take(self, number: int) -> bool:
        path = self.root / f"trial-{number}"
        path.mkdir(exist_ok=True)
        try:
            lock.own(path)
        except lock.FolderInUse:
            return False
        return True

    def release(self, number: int) -> None:
        lock.disown(self.root / f"trial-{number}")


# ---- the sampler, seeded per trial ----


def sampler_factory(sampler_cfg: DictConfig, seed: int) -> Callable[[int], Any]:
    """make(trial number) -> the configured sampler, seeded from (seed, trial number) when it
    takes a seed. Optuna's samplers keep their history in the storage, so a sampler made for
    each trial proposes what one sampler would; its random stream, though, starts from its
    seed, and a sampler made once per launch would replay the same proposals in a continued
    study. Seeded by trial number, a continued study and two workers never repeat a draw."""
    from hydra.utils import get_class, instantiate

    cls = get_class(sampler_cfg._target_)
    takes_seed = "seed" in inspect.signature(cls).parameters
    base = sampler_cfg.get("seed")
    base = seed if base is None else int(base)

    def make(number: int) -> Any:
        from trainlab.seeds import epoch_seed  # (torch: not while Hydra loads its plugins)

        if not takes_seed:
            return instantiate(sampler_cfg)
        return instantiate(sampler_cfg, seed=epoch_seed(base, number) % 2**32)

    return make


def seeded_per_trial(make: Callable[[int], Any]) -> Any:
    """An Optuna sampler that hands each trial to a sampler of its own, make(trial.number)."""
    import optuna

    class TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._of: dict[int, Any] = {}

        def _for(self, trial: Any) -> Any:
            if trial.number not in self._of:
                self._of[trial.number] = make(trial.number)
            return self._of[trial.number]

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return self._for(trial).sample_independent(study, trial, name, dist)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            sampler = self._for(trial)
            del self._of[trial.number]
            sampler.after_trial(study, trial, state, values)

    return TrialSeeded()


# ---- objectives ----


def objectives_of(sweeper: DictConfig, monitor: str) -> list[str]:
    """hydra.sweeper.objectives, or the monitored metric alone."""
    names = sweeper.get("objectives")
    return [monitor] if names is None else [str(n) for n in names]


def directions_of(sweeper: DictConfig, objectives: list[str]) -> list[str]:
    """minimize/maximize per objective: hydra.sweeper.direction (one, or one per objective),
    or from each metric (a loss, an error, parameters, seconds: minimize)."""
    given = sweeper.get("direction")
    if given is None:
        return [
            "minimize" if name in RECORD_KEYS or metric_mode(name) == "min" else "maximize"
            for name in objectives
        ]
    given = [given] if isinstance(given, str) else [str(d) for d in given]
    if len(given) != len(objectives) or any(d not in ("minimize", "maximize") for d in given):
        raise ConfigError(
            f"hydra.sweeper.direction={OmegaConf.to_container(sweeper).get('direction')}: give "
            f"minimize or maximize for each of the {len(objectives)} objective(s) "
            f"({', '.join(objectives)}), or null to follow each metric"
        )
    return given


def outcome(run_dir: Path, objectives: list[str]) -> tuple[str, list[float] | None]:
    """(status, the objectives' values or None) of a trial's job, read from its folder: the
    one record every launcher leaves where the sweeper can read it."""
    status = _read(run_dir / "status.json").get("status", "failed")
    if status != "completed":
        return status, None
    results = _read(run_dir / "metrics.json")
    values = [_objective(results, name) for name in objectives]
    if any(v is None or not math.isfinite(v) for v in values):
        return "failed", None
    return status, values


def _objective(results: dict[str, Any], name: str) -> float | None:
    value = results.get(name) if name in RECORD_KEYS else results.get("best", {}).get(name)
    return float(value) if isinstance(value, int | float) else None


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_json(path) if path.is_file() else {}
    except ConfigError:
        return {}


# ---- pruning, in the job ----


class Pruning:
    """A trial's reports to its study, from the job that trains it: the monitored value after
    each validation; `check` says why the study's pruner stops the trial, or None."""

    def __init__(self, trial: Any, monitor: str, pruner: str) -> None:
        self.trial, self.monitor, self.pruner = trial, monitor, pruner

    @classmethod
    def of_job(cls, hydra_cfg: DictConfig, monitor: str, main: bool = True) -> Pruning | None:
        """For a job of a trainlab Optuna sweep with a pruner: its trial (the job number is the
        trial number); on a rank but the first, one that never prunes (rank 0 decides, the loop
        hands its answer on). None for any other job."""
        sweeper = hydra_cfg.get("sweeper")
        if sweeper is None or sweeper.get("_target_") != SWEEPER or sweeper.get("pruner") is None:
            return None
        if not main:
            return cls(None, monitor, "")
        import optuna
        from hydra.utils import instantiate

        where = storage(sweeper.storage, Path(hydra_cfg.sweep.dir))
        pruner = instantiate(sweeper.pruner)
        study = optuna.load_study(study_name=sweeper.study_name, storage=where, pruner=pruner)
        trial_id = where.get_trial_id_from_study_id_trial_number(
            where.get_study_id_from_name(sweeper.study_name), int(hydra_cfg.job.num)
        )
        return cls(optuna.Trial(study, trial_id), monitor, pruner.__class__.__name__)

    def check(self, record: dict[str, float]) -> str | None:
        value = record.get(self.monitor)
        if self.trial is None or value is None or not math.isfinite(value):
            return None
        self.trial.report(float(value), int(record["epoch"]))
        if not self.trial.should_prune():
            return None
        return f"{self.pruner}: {self.monitor} {value:.4f} at epoch {record['epoch']}"
