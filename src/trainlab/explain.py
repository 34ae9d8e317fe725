"""One-line messages for the mistakes Hydra catches while composing the config: an unknown
group option or key (with the nearest real one), a value of the wrong type, an override that
does not parse, a YAML file that does not. Hydra's own report is several lines of internals;
this composes the same overrides again through Hydra's compose API to get at the error
itself. No torch here: a config error answers in well under a second."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainlab.errors import first_line


def explain(conf_dir: Path, overrides: list[str]) -> str | None:
    """Why `trainlab train OVERRIDES` does not compose, as one line, or None if it does (or
    fails in a way this does not know: then Hydra's own message is shown). Never raises."""
    try:
        return _explain(conf_dir, overrides)
    except Exception:
        return None


def _explain(conf_dir: Path, overrides: list[str]) -> str | None:
    parser = OverridesParser.create()
    for text in overrides:
        try:
            parser.parse_overrides([text])
        except OverrideParseException as e:
            return (
                f"{text}: not a valid override ({first_line(e)}); write key=value, and quote "
                "values with brackets, commas or spaces: 'model.hidden=[64,64]'"
            )
    parsed = parser.parse_overrides(overrides)
    # A sweep (-m) composes each of its values; try them with the first value of the others.
    # An interval is tried at its ends, a glob with the group options it matches.
    values = [_values(o, conf_dir) for o in parsed]
    for o, v in zip(parsed, values, strict=True):
        if o.is_sweep_override() and not v:
            group = o.get_key_element()
            options = ", ".join(sorted(p.stem for p in (conf_dir / group).glob("*.yaml")))
            return f"{o.input_line}: matches no option of {group}; options: {options or 'none'}"
    first = first_values(parsed, conf_dir)
    variants = [first]
    for i, o in enumerate(parsed):
        variants += [[*first[:i], f"{o.get_key_element()}={v}", *first[i + 1:]]
                     for v in values[i][1:]]  # fmt: skip
    shown = [o.input_line for o in parsed]  # a hint quotes what was typed, sweep and all
    for variant in variants:
        message = _compose_error(conf_dir, variant, shown)
        if message is not None:
            return message
    return None


def first_values(parsed: list, conf_dir: Path) -> list[str]:
    """The overrides with each sweep replaced by its first value: one job's command line."""
    values = [_values(o, conf_dir) for o in parsed]
    return [f"{o.get_key_element()}={v[0]}" if v else o.input_line
            for o, v in zip(parsed, values, strict=True)]  # fmt: skip


def _values(override: Any, conf_dir: Path) -> list[str]:
    """The values one job of a sweep override may get ([] for a plain override)."""
    if not override.is_sweep_override():
        return []
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        return [str(sweep.start), str(sweep.end)]
    if isinstance(sweep, Glob):
        group = conf_dir / override.get_key_element()
        options = sorted(p.stem for p in group.glob("*.yaml"))
        return sweep.filter(options)
    return list(override.sweep_string_iterator())


def _compose(conf_dir: Path, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose("train", overrides=overrides)


def _compose_error(conf_dir: Path, overrides: list[str], shown: list[str]) -> str | None:
    try:
        _compose(conf_dir, overrides)
    except MissingConfigException as e:
        return _missing_option(e, overrides)
    except Exception as e:  # ConfigCompositionException and friends: the cause says what
        cause = e.__cause__
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            return _bad_key(conf_dir, overrides, cause, shown)
        return _yaml_error(e) or first_line(e)
    return None


def _missing_option(error: MissingConfigException, overrides: list[str]) -> str:
    missing = error.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    options = list(error.options or [])
    if not options:  # not a group option: a file named in a defaults list
        return f"{missing}: no such config file ({first_line(error)})"
    near = difflib.get_close_matches(option, options, n=1)
    hint = f"; did you mean {group}={near[0]}?" if near else "."
    return f"{group}={option}: no such option{hint} Options: {', '.join(options)}"


def _bad_key(
    conf_dir: Path, overrides: list[str], cause: OmegaConfBaseException, shown: list[str]
) -> str:
    key = cause.full_key
    at = [i for i, o in enumerate(overrides) if o.lstrip("+~").split("=", 1)[0] == key]
    given = overrides[at[0]] if at else key
    typed = shown[at[0]] if at and len(shown) == len(overrides) else given
    value = typed.split("=", 1)[1] if "=" in typed else ""
    tried = given.split("=", 1)[1] if "=" in given else ""  # one job's value of a sweep
    if "not in" in str(cause) or "not in struct" in str(cause):
        parent, _, name = key.rpartition(".")
        node = _node_at(conf_dir, [o for o in overrides if o != given], parent)
        keys = sorted(str(k) for k in node) if isinstance(node, DictConfig) else []
        near = difflib.get_close_matches(name, keys, n=1)
        where = parent or "the config"
        if near:
            full = f"{parent}.{near[0]}" if parent else near[0]
            return f"{key}: unknown key; did you mean {full}={value}?"
        listed = ", ".join(keys) if keys else "none"
        return f"{key}: unknown key; {where} has: {listed}"
    if "is not Optional" in str(cause):
        default = _node_at(conf_dir, [o for o in overrides if o != given], key)
        shown = f" (default: {default})" if default is not None else ""
        return f"{key}={value}: must have a value{shown}; leave it out or give one"
    wanted = re.search(r"could not be converted to (\w+)", str(cause))
    if wanted:
        kind = TYPE_WORDS.get(wanted.group(1), wanted.group(1).lower())
        if kind == "an integer" and "interval(" in value:
            return f"{key}={value}: must be an integer; an interval of them: int(interval(1, 8))"
        return f"{key}={value}: must be {kind}, not {tried!r}"
    return f"{key}={value}: {first_line(cause)}"


TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}


def _node_at(conf_dir: Path, overrides: list[str], key: str) -> Any:
    """What `key` holds in the config composed from `overrides` (None if that fails too)."""
    try:
        cfg = _compose(conf_dir, overrides)
        return OmegaConf.select(cfg, key) if key else cfg
    except Exception:
        return None


def _yaml_error(error: BaseException) -> str | None:
    """A YAML syntax error in a config file: the file, the line and what is wrong."""
    import yaml

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, yaml.MarkedYAMLError) and seen.problem_mark is not None:
            mark = seen.problem_mark
            return (
                f"{mark.name}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: "
                f"{seen.problem}"
            )
        seen = seen.__cause__ or seen.__context__
    return None
