"""Every option of every config group composes, passes check() and instantiates; the schema
rejects typos and wrong types at compose time; check() names the key."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from trainlab import config
from trainlab.cli import CONF_DIR
from trainlab.errors import ConfigError

OPTION_FILES = sorted(p for p in CONF_DIR.rglob("*.yaml") if p.parent != CONF_DIR)


def option_id(path) -> str:
    return str(path.relative_to(CONF_DIR).with_suffix(""))


PROMISED = {
    "model": "mlp cnn1d cnn lenet gru sequential torchvision",
    "optimizer": "sgd asgd adagrad adadelta rmsprop rprop adam adamw adamax nadam radam lbfgs",
    "scheduler": "none step multistep exponential cosine cosine_warm_restarts onecycle "
    "lambda_warmup plateau",
    "loss": "cross_entropy nll mse l1 smooth_l1 huber bce_with_logits soft_margin multi_margin "
    "dice multi_task log_cosh hinge kl_div",
    "dataset": "mnist1d digits synthetic_regression synthetic_binary synthetic_multilabel "
    "synthetic_segmentation fake mnist fashion_mnist cifar10 image_folder csv",
    "experiment": "mnist1d_logreg mnist1d_mlp mnist1d_cnn mnist1d_gru mnist_mlp_sgd",
    "trainer": "default",
}


def test_the_catalogue_has_every_promised_option():
    have = {option_id(p) for p in OPTION_FILES}
    promised = {f"{group}/{o}" for group, options in PROMISED.items() for o in options.split()}
    assert promised <= have, sorted(promised - have)


def test_optimizer_and_scheduler_nodes_are_partial():
    for path in OPTION_FILES:
        group = path.parent.name
        node = OmegaConf.load(path)
        if group == "optimizer" or (group == "scheduler" and node._target_ is not None):
            assert node._partial_ is True, path


def test_trainer_yaml_and_schema_have_the_same_keys():
    """Defaults live in YAML, types in the schema: the two must list the same keys."""

    def fields(cls) -> set[str]:
        keys = set()
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory if callable(f.default_factory) else None):
                keys |= {f"{f.name}.{k}" for k in fields(f.default_factory)}
            else:
                keys.add(f.name)
        return keys

    def leaves(node, prefix="") -> set[str]:
        keys = set()
        for k, v in node.items_ex(resolve=False):
            if OmegaConf.is_dict(v):
                keys |= leaves(v, f"{prefix}{k}.")
            else:
                keys.add(f"{prefix}{k}")
        return keys

    trainer_yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "trainer/default.yaml"))
    assert leaves(OmegaConf.create(trainer_yaml)) == fields(config.TrainerConfig)


KEY_LINE = re.compile(r"^\s*([A-Za-z_][\w]*):")


@pytest.mark.parametrize(
    "path", [p for p in OPTION_FILES if p.parent.name != "experiment"], ids=option_id
)
def test_every_key_has_a_comment(path):
    for line in path.read_text().splitlines():
        match = KEY_LINE.match(line)
        if (
            match
            and match.group(1) not in ("_target_", "_partial_")
            and not line.rstrip().endswith(":")
        ):
            assert "#" in line, f"{option_id(path)}: no comment on {line.strip()!r}"


def test_typo_in_a_key_fails_at_compose(make_cfg):
    with pytest.raises(ConfigCompositionException) as info:
        make_cfg("trainer.max_epoch=3")
    assert "Key 'max_epoch' not in 'TrainerConfig'" in str(info.value.__cause__)
    # Group nodes have no dataclass, but Hydra's struct mode rejects unknown keys there too.
    with pytest.raises(ConfigCompositionException) as info:
        make_cfg("model.chanels=8")
    assert isinstance(info.value.__cause__, ConfigKeyError | ConfigAttributeError)
    assert "chanels" in str(info.value.__cause__)


def test_wrong_type_fails_at_compose(make_cfg):
    with pytest.raises(ConfigCompositionException) as info:
        make_cfg("trainer.batch_size=big")
    assert isinstance(info.value.__cause__, ValidationError)
    assert "trainer.batch_size" in str(info.value.__cause__)


def test_unknown_option_fails_at_compose(make_cfg):
    with pytest.raises(Exception, match="optimizer"):
        make_cfg("optimizer=sgdd")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.batch_size=0", "trainer.batch_size=0: must be >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: must be >= 1"),
        ("trainer.mode=maximum", "trainer.mode=maximum: must be one of auto, min, max"),
        (
            "trainer.monitor=val/f1",
            "trainer.monitor=val/f1: dataset.task=classification reports val/loss, val/acc",
        ),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0: must be >= 1"),
        ("trainer.accelerator=tpu", "trainer.accelerator=tpu: must be one of auto, cpu, cuda"),
        ("trainer.grad_clip_norm=-1", "trainer.grad_clip_norm=-1.0: must be a number > 0"),
        ("dataset.val_fraction=1.5", "dataset.val_fraction=1.5: must be in (0, 1)"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1: must be a number > 0"),
        ("scheduler.interval=batch", "scheduler.interval=batch: must be one of epoch, step"),
        ("loss.label_smoothing=1.0", "loss.label_smoothing=1.0: must be in [0, 1)"),
        ("seed=-3", "seed=-3: must be >= 0"),
    ],
)
def test_check_names_the_key_the_value_and_the_rule(make_cfg, override, message):
    cfg = make_cfg(override)
    with pytest.raises(ConfigError) as info:
        config.check(cfg)
    assert str(info.value).startswith(message)


def test_targets_outside_the_allowlist_are_refused(make_cfg, monkeypatch):
    cfg = make_cfg("model._target_=os.system")
    with pytest.raises(ConfigError, match=r"model._target_=os.system: not an allowed target"):
        config.check(cfg)
    nested = make_cfg("model=sequential", "model.layers.act1._target_=builtins.eval")
    with pytest.raises(ConfigError, match=r"model.layers.act1._target_=builtins.eval"):
        config.check(nested)
    # TRAINLAB_TARGETS cannot open os (tests/test_targets.py: a user's package it can)
    monkeypatch.setenv("TRAINLAB_TARGETS", "os")
    with pytest.raises(ConfigError, match=r"model._target_=os.system: not an allowed target"):
        config.check(cfg)


def test_override_values_read_as_the_command_line_reads_them():
    """`trainlab resume RUN optimizer.lr=5e-4`: YAML 1.1 reads 5e-4 as a string, Hydra (and so
    `trainlab train`) as a float; a resume's override means what it meant at the launch."""
    from trainlab.runconfig import parse_value

    assert parse_value("5e-4") == 5e-4 and isinstance(parse_value("1E3"), float)
    assert parse_value("2.5e-3") == 2.5e-3 and parse_value("-1e-2") == -0.01
    assert parse_value("0.1") == 0.1 and parse_value("3") == 3 and parse_value("adam") == "adam"
    assert parse_value("[1, 2]") == [1, 2] and parse_value("") is None


def test_a_number_key_given_text_is_a_config_error_not_a_crash(make_cfg):
    with pytest.raises(ConfigError) as info:
        config.check(make_cfg("optimizer.lr=fast"))
    assert "optimizer.lr=fast: must be a number > 0" in str(info.value)
