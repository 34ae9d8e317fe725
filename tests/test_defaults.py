"""The YAML catalogue says what torch says: every optimizer, scheduler and loss YAML whose
target is a torch class lists every constructor argument with torch's own default, except the
deviations below, each with its reason (README quotes this table, and the YAML line comments
it). A new deviation, a changed torch default, or a forgotten argument fails here."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from trainlab.cli import CONF_DIR

# (group/option, key): (the YAML's value, why it is not torch's default)
DEVIATIONS = {
    ("optimizer/adam", "lr"): (0.01, "the MNIST-1D paper's setting for its small models"),
    ("optimizer/sgd", "lr"): (0.01, "the classic MNIST MLP recipe; torch's 1e-3 barely moves it"),
    ("optimizer/sgd", "momentum"): (0.9, "the classic recipe; torch's 0 is plain SGD"),
    ("optimizer/lbfgs", "line_search_fn"): (
        "strong_wolfe",
        "with torch's None and lr 1, LBFGS on mini-batches diverged to NaN in a few steps",
    ),
    ("scheduler/plateau", "mode"): (None, "null = trainer.monitor's direction (min or max)"),
    ("loss/kl_div", "reduction"): (
        "batchmean",
        "the KL divergence per sample; torch's 'mean' divides by the classes too",
    ),
}
# Keys that are trainlab's, not the constructor's; and constructor arguments left out on
# purpose: the parameters and optimizer are passed by the builder, size_average and reduce
# are deprecated by torch (reduction says it).
TRAINLAB_KEYS = {"_target_", "_partial_", "param_groups", "eval_with_average", "interval"}
NOT_LISTED = {"params", "optimizer", "size_average", "reduce"}


def torch_options() -> list[tuple[str, Path]]:
    found = []
    for group in ("optimizer", "scheduler", "loss"):
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            target = OmegaConf.load(path).get("_target_")
            if target is not None and target.startswith("torch."):
                found.append((f"{group}/{path.stem}", path))
    return found


@pytest.mark.parametrize("option,path", torch_options(), ids=lambda v: str(v).rsplit("/", 1)[-1])
def test_every_argument_has_torchs_default_or_a_listed_deviation(option, path):
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    params = inspect.signature(get_class(node["_target_"])).parameters
    for key, value in node.items():
        if key in TRAINLAB_KEYS:
            continue
        assert key in params, f"{option}: {key} is not an argument of {node['_target_']}"
        default = params[key].default
        if default is inspect.Parameter.empty:
            continue  # a required argument: the YAML's value is the choice
        if isinstance(default, tuple):
            default = list(default)
        if (option, key) in DEVIATIONS:
            expected, why = DEVIATIONS[(option, key)]
            assert value == expected != default, f"{option}.{key}: the table says {expected}"
            line = next(li for li in path.read_text().splitlines() if li.startswith(f"{key}:"))
            comment = line.partition("#")[2]
            assert "torch" in comment, (
                f"{option}.{key}: its comment must give torch's value ({why})"
            )
        else:
            assert value == default, f"{option}.{key}={value!r}; torch's default is {default!r}"
    missing = [
        name for name, p in params.items()
        if name not in node and name not in NOT_LISTED
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]  # fmt: skip
    assert not missing, f"{option}: lists no {', '.join(missing)}"


def test_every_deviation_is_in_a_yaml_and_quoted_in_the_readme():
    options = dict(torch_options())
    readme = (CONF_DIR.parent / "README.md").read_text()
    for option, key in DEVIATIONS:
        assert key in OmegaConf.load(options[option]), (option, key)
        name = option.split("/")[1]
        assert f"`{name}` `{key}`" in readme, f"README does not quote {option}.{key}"
