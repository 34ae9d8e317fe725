"""What `trainlab train` does with its arguments before Hydra acts on them: the flags it takes
itself (--config-dir) or refuses (Hydra's shell completion, and the flags that would read a
config the check cannot see), and the whole config checked first (precheck). No torch."""

from __future__ import annotations

from trainlab import config, project
from trainlab.config import CONF_DIR
from trainlab.errors import ConfigError

# Hydra flags after which no task runs; and those that would read a config (or, for
# --experimental-rerun, a pickle) from elsewhere, which the pre-check could not see.
NOTHING_RUNS = {"--cfg", "-c", "--info", "-i", "--resolve", "--package", "-p", "--hydra-help",
                "--version"}  # fmt: skip
OTHER_CONFIGS = {"--config-path", "-cp", "--config-name", "-cn", "--experimental-rerun"}
COMPLETION = {"--shell-completion", "-sc"}
CONFIG_DIR = ("--config-dir", "-cd")


def own_flags(args: list[str]) -> tuple[list[str], str | None]:
    """(the arguments for Hydra, TRAINLAB_CONFIG_PATH for the command or None). `--config-dir
    DIR` (`-cd DIR`, `--config-dir=DIR`) is taken out: trainlab puts DIR on the search path
    itself (project.py), where the pre-check sees it. ConfigError for what is refused."""
    flags = sorted({a.split("=", 1)[0] for a in args} & COMPLETION)
    if flags:
        raise ConfigError(
            f"{flags[0]}: Hydra's completion would answer for any command named train; "
            'install trainlab\'s own: eval "$(trainlab completion bash)" (or zsh)'
        )
    rest, found = [], None
    items = iter(args)
    for arg in items:
        flag, eq, value = arg.partition("=")
        if flag not in CONFIG_DIR:
            rest.append(arg)
            continue
        found = value if eq else next(items, None)
        if not found:
            raise ConfigError(f"{flag}: give the folder, e.g. {flag} myproject/conf")
    config_path = project.with_config_dir(found) if found else None
    with project.environment(config_path):
        project.config_dirs()  # a TRAINLAB_CONFIG_PATH folder that is not there: said here
    return rest, config_path


def overrides(args: list[str]) -> list[str]:
    """The key=value arguments of `trainlab train` (without -m and Hydra's flags)."""
    return [a for a in args if "=" in a and not a.startswith("-")]


def precheck(args: list[str]) -> str | None:
    """The whole config, `hydra:` included, checked before Hydra acts on it: Hydra builds the
    callbacks and configures logging (dictConfig calls what a `()` key names) before any
    callback of ours runs. Composed through the compose API (on the same search path, the
    project's config folders included), with a sweep's first values. A sweep has each of
    its values composed first (explain.py): a typo in its 7th value is said before the first
    job trains, and nothing is made. What does not compose here is said in one line where
    explain.py knows the error, and otherwise left to Hydra, which reports it."""
    flags = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    refused = sorted(flags & OTHER_CONFIGS)
    if refused:
        return (
            f"{refused[0]}: trainlab train reads trainlab's conf/ and your project's, which "
            "are checked before anything runs; add a config folder with --config-dir DIR"
        )
    if flags & NOTHING_RUNS:  # --cfg job, --info ...: the task does not run
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf.errors import OmegaConfBaseException

    from trainlab.explain import explain, first_values

    if "-m" in args or "--multirun" in args:
        message = explain(CONF_DIR, overrides(args))
        if message is not None:
            return message
    try:
        # One job's values: a sweep's first, an interval's low end (each job checks its own).
        first = first_values(OverridesParser.create().parse_overrides(overrides(args)), CONF_DIR)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=first, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    except Exception:
        return None
    finally:
        GlobalHydra.instance().clear()
    try:
        config.check(cfg)
    except ConfigError as e:
        return str(e)
    except OmegaConfBaseException:
        return None  # e.g. an interpolation only a real launch resolves; the callback checks
    return None
