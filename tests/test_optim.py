"""Optimizers and schedulers behave exactly as torch's classes driven by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim import lr_scheduler

from runs import saved_history
from trainlab import checkpoint_files, rundir, train
from trainlab.build import build_model, build_optimizer
from trainlab.cli import CONF_DIR
from trainlab.data import build_data, epoch_order
from trainlab.errors import ConfigError
from trainlab.loop import evaluate
from trainlab.tasks import Task

OPTIMIZERS = sorted((CONF_DIR / "optimizer").glob("*.yaml"))
SCHEDULERS = sorted(p for p in (CONF_DIR / "scheduler").glob("*.yaml") if p.stem != "none")


def run(make_cfg, tmp_path, *overrides, name="run"):
    cfg = make_cfg(*overrides)
    run_dir = rundir.claim(tmp_path / name)
    results = train.run(cfg, run_dir, launch={"overrides": list(overrides), "choices": {}})
    return cfg, run_dir, results


def constructor_args(path) -> tuple[str, dict]:
    """The class and keyword arguments a YAML option names, read straight from the file."""
    node = OmegaConf.to_container(OmegaConf.load(path))
    target = node.pop("_target_")
    for key in ("_partial_", "param_groups", "eval_with_average", "interval"):
        node.pop(key, None)
    return target.rpartition(".")[2], node


@pytest.mark.parametrize("path", OPTIMIZERS, ids=lambda p: p.stem)
def test_each_optimizer_matches_a_hand_written_loop(path, make_cfg, tmp_path):
    steps, batch = 8, 50
    cfg, run_dir, _ = run(
        make_cfg, tmp_path, f"optimizer={path.stem}", "model=mlp",
        f"trainer.max_steps={steps}", f"trainer.batch_size={batch}",
    )  # fmt: skip

    # The hand-written loop: same model init, same data order, torch's class with the YAML's args.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    data = build_data(cfg.dataset, torch.device("cpu"))
    name, kwargs = constructor_args(path)
    optimizer = getattr(torch.optim, name)(model.parameters(), **kwargs)
    loss_fn = torch.nn.CrossEntropyLoss()
    order = epoch_order(len(data.train), True, cfg.seed, epoch=0)
    for i in range(steps):
        idx = order[i * batch : (i + 1) * batch]
        x, y = data.train.x[idx], data.train.y[idx]

        def closure(x=x, y=y):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        if name == "LBFGS":
            optimizer.step(closure)
        else:
            closure()
            optimizer.step()

    trained = checkpoint_files.load(run_dir / "checkpoints" / "last.pt")["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(trained[key], value), key


SCHEDULE_OVERRIDES = {
    "step": ["scheduler.step_size=1", "scheduler.gamma=0.5"],
    "multistep": ["scheduler.milestones=[1,3]"],
    "exponential": ["scheduler.gamma=0.5"],
    "cosine_warm_restarts": ["scheduler.T_0=1", "scheduler.T_mult=2"],
    "lambda_warmup": ["scheduler.warmup_steps=5"],
    # val/loss falls every epoch, so "max" sees a plateau at once and cuts the lr each time.
    "plateau": [
        "scheduler.patience=0",
        "scheduler.factor=0.5",
        "trainer.monitor=val/loss",
        "trainer.mode=max",
    ],
}


@pytest.mark.parametrize("path", SCHEDULERS, ids=lambda p: p.stem)
def test_each_scheduler_traces_the_lr_torch_gives_by_hand(path, make_cfg, tmp_path):
    epochs, per_epoch = 4, 9  # 3600 train samples, batch 400
    cfg, run_dir, _ = run(
        make_cfg, tmp_path, f"scheduler={path.stem}", "optimizer=sgd", "model=mlp",
        f"trainer.max_epochs={epochs}", "trainer.batch_size=400", "trainer.log_every_n_steps=1",
        *SCHEDULE_OVERRIDES.get(path.stem, []),
    )  # fmt: skip
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    traced = [(e.step, e.value) for e in acc.Scalars("lr/group0")]
    history = saved_history(run_dir / "checkpoints" / "last.pt")

    # By hand: torch's scheduler on a bare SGD, stepped as its docs describe.
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    scheduler = hand_scheduler(path, cfg, optimizer, epochs, per_epoch)
    interval = cfg.scheduler.interval
    expected = []
    for epoch in range(epochs):
        for i in range(per_epoch):
            optimizer.step()
            if interval == "step":
                if isinstance(scheduler, lr_scheduler.CosineAnnealingWarmRestarts):
                    scheduler.step(epoch + i / per_epoch)
                else:
                    scheduler.step()
            expected.append((epoch * per_epoch + i + 1, optimizer.param_groups[0]["lr"]))
        if interval == "epoch":
            if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                scheduler.step(history[epoch][cfg.trainer.monitor])  # the metric trainlab fed
            else:
                scheduler.step()
    # TensorBoard stores float32: compare the float32 of each exact lr. (lambda_warmup's
    # reference is another formula for the same curve: equal to rounding.)
    if path.stem == "lambda_warmup":
        assert [s for s, _ in traced] == [s for s, _ in expected]
        assert [v for _, v in traced] == pytest.approx([lr for _, lr in expected], rel=1e-5)
    else:
        assert traced == [(s, float(np.float32(lr))) for s, lr in expected]
    assert len({v for _, v in traced}) > 1, "the schedule never changed the lr"


def hand_scheduler(path, cfg, optimizer, epochs, per_epoch):
    name, kwargs = constructor_args(path)
    resolved = OmegaConf.to_container(cfg.scheduler, resolve=True)
    kwargs = {k: resolved[k] for k in kwargs}  # the run's values (overrides, interpolations)
    total = epochs * per_epoch if cfg.scheduler.interval == "step" else epochs
    for key in ("T_max", "total_steps"):
        if key in kwargs and kwargs[key] is None:
            kwargs[key] = total
    if name == "lambda_warmup":
        # Independent of trainlab's code: torch's own warmup and cosine, one after the other.
        assert kwargs["decay"] == "cosine"
        warmup, total = kwargs["warmup_steps"], kwargs["total_steps"]
        parts = [
            lr_scheduler.LinearLR(optimizer, kwargs["start_factor"], 1.0, total_iters=warmup),
            lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=total - warmup, eta_min=cfg.optimizer.lr * kwargs["min_factor"]
            ),
        ]
        return lr_scheduler.SequentialLR(optimizer, parts, milestones=[warmup])
    if name == "ReduceLROnPlateau":
        kwargs["mode"] = cfg.trainer.mode
    return getattr(lr_scheduler, name)(optimizer, **kwargs)


def test_lbfgs_reaches_the_least_squares_optimum(make_cfg, tmp_path):
    cfg, run_dir, results = run(
        make_cfg, tmp_path, "optimizer=lbfgs", "dataset=synthetic_regression", "dataset.noise=0",
        "model=mlp", "model.hidden_sizes=[]", "loss=mse", "trainer.batch_size=5000",
        "trainer.max_steps=4",
    )  # fmt: skip
    data = build_data(cfg.dataset, torch.device("cpu"))
    x = torch.cat([data.train.x, torch.ones(len(data.train), 1)], 1).double()
    solution = torch.linalg.lstsq(x, data.train.y.double()).solution
    weights = checkpoint_files.load(run_dir / "checkpoints" / "last.pt")["model"]
    fitted = torch.cat([weights["head.weight"].T, weights["head.bias"][None]]).double()
    assert torch.allclose(fitted, solution, atol=1e-4)
    assert results["final"]["val/rmse"] < 1e-3


def test_asgd_validates_tests_and_keeps_the_averaged_weights(make_cfg, tmp_path):
    cfg, run_dir, results = run(
        make_cfg, tmp_path, "optimizer=asgd", "optimizer.t0=5", "model=mlp",
        "trainer.max_epochs=1",
    )  # fmt: skip
    last = checkpoint_files.load(run_dir / "checkpoints" / "last.pt")
    best = checkpoint_files.load(run_dir / "checkpoints" / "best.pt")
    names = list(last["model"])  # the MLP has parameters only, in optimizer order
    ax = [last["optimizer"]["state"][i]["ax"] for i in range(len(names))]
    for name, average in zip(names, ax, strict=True):
        assert torch.equal(best["model"][name], average), name
        assert not torch.equal(last["model"][name], average), name

    # The logged validation came from the averaged weights, not the raw ones.
    model = build_model(cfg.model)
    data = build_data(cfg.dataset, torch.device("cpu"))
    from trainlab.data import TensorBatches

    val = TensorBatches(data.val, cfg.trainer.batch_size, False, cfg.seed)
    task, loss_fn = Task.from_config(cfg.dataset), torch.nn.CrossEntropyLoss()
    model.load_state_dict(best["model"])
    assert evaluate(model, val, loss_fn, task, "val")["val/loss"] == results["final"]["val/loss"]
    model.load_state_dict(last["model"])
    assert evaluate(model, val, loss_fn, task, "val")["val/loss"] != results["final"]["val/loss"]

    # The test's confusion matrix comes from the same (averaged) weights as its accuracy.
    confusion = torch.tensor(results["test_confusion_matrix"])
    assert confusion.trace() / confusion.sum() == pytest.approx(results["test"]["test/acc"])


def test_param_groups_by_name_pattern(make_cfg, tmp_path):
    groups = '[{match:"hidden.0.*",lr:0.1},{match:"head.*",weight_decay:0.5}]'
    cfg = make_cfg("optimizer=sgd", "model=mlp", f"optimizer.param_groups={groups}")
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg.optimizer, model)
    by_id = {id(p): n for n, p in model.named_parameters()}
    members = [sorted(by_id[id(p)] for p in g["params"]) for g in optimizer.param_groups]
    assert members == [
        ["hidden.1.0.bias", "hidden.1.0.weight"],  # matched by no pattern: the defaults
        ["hidden.0.0.bias", "hidden.0.0.weight"],
        ["head.bias", "head.weight"],
    ]
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.1, 0.01]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.0, 0.5]

    # Each group's lr gets its own TensorBoard curve.
    _, run_dir, _ = run(make_cfg, tmp_path, "optimizer=sgd", "model=mlp",
                        f"optimizer.param_groups={groups}", "scheduler=cosine")  # fmt: skip
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert {"lr/group0", "lr/group1", "lr/group2"} <= set(acc.Tags()["scalars"])
    assert acc.Scalars("lr/group1")[0].value > acc.Scalars("lr/group0")[0].value


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ('[{match:"fc9.*",lr:0.1}]', r"param_groups\[0\]\.match=fc9\.\*: matches no parameter"),
        ('[{match:"head.*",lrr:0.1}]', r"param_groups\[0\]\.lrr: not an option of this optimizer"),
        ("[{lr:0.1}]", r"param_groups\[0\]=\{'lr': 0\.1\}: needs a `match` pattern"),
    ],
)
def test_bad_param_groups_are_config_errors(make_cfg, groups, message):
    cfg = make_cfg("optimizer=sgd", "model=mlp", f"optimizer.param_groups={groups}")
    with pytest.raises(ConfigError, match=message):
        from trainlab import config

        config.check(cfg)
        build_optimizer(cfg.optimizer, build_model(cfg.model))


def test_lbfgs_refuses_param_groups(make_cfg):
    from trainlab import config

    cfg = make_cfg(
        "optimizer=lbfgs", "model=mlp", 'optimizer.param_groups=[{match:"head.*",lr:0.1}]'
    )
    with pytest.raises(ConfigError, match="LBFGS keeps one parameter group"):
        config.check(cfg)


def test_accumulating_two_half_batches_equals_one_full_batch(make_cfg, tmp_path):
    common = ["optimizer=sgd", "model=mlp", "trainer.max_steps=10"]
    _, full, _ = run(make_cfg, tmp_path, *common, "trainer.batch_size=100", name="full")
    _, halves, results = run(
        make_cfg, tmp_path, *common, "trainer.batch_size=50", "trainer.accumulate_grad_batches=2",
        name="halves",
    )  # fmt: skip
    assert results["steps"] == 10
    a = checkpoint_files.load(full / "checkpoints" / "last.pt")["model"]
    b = checkpoint_files.load(halves / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert json.loads((halves / "metrics.json").read_text())["steps"] == 10
