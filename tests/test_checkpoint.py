"""Checkpoint files: plain types, atomic writes committed by the manifest, rotation, verified
loads that fall back past a bad file, refusal of anything that is not ours, full disks."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from trainlab import checkpoint, checkpoint_files
from trainlab.checkpoint_files import CheckpointError, CheckpointSaveError
from trainlab.config import CheckpointConfig, Interval
from trainlab.data import Split, TensorBatches
from trainlab.distributed import World
from trainlab.parts import LoopState, Parts, Precision
from trainlab.tasks import Task

# What torch.load(weights_only=True) reads without an allowlist (state_dict() is an OrderedDict).
PLAIN = (dict, OrderedDict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


def Policy(keep_last: int, top_k: int) -> CheckpointConfig:
    return CheckpointConfig(keep_last=keep_last, top_k=top_k)


KEEP = Policy(keep_last=2, top_k=1)


def parts(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    return model, optimizer, scheduler


def train_a_little(model, optimizer, scheduler, steps=3):
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


LOOP = {"epoch": 2, "best": 0.5, "history": [{"epoch": 1, "step": 3, "val/loss": 0.7}]}


def as_parts(model, optimizer, scheduler):
    """The three stateful parts as the loop holds them, with a stand-in task and data."""
    split = Split(torch.zeros(6, 4), torch.zeros(6, 3))
    batches = TensorBatches(split, 3, False, 0)
    return Parts(model, nn.MSELoss(), optimizer, scheduler, Interval.epoch, Task("regression", 3),
                 batches, batches, Precision("cpu"))  # fmt: skip


def snapshot(model, optimizer, scheduler, step=6):
    loop = LoopState(**LOOP | {"step": step})
    context = {"config": "seed: 0\n", "environment": {"torch": str(torch.__version__)}}
    return checkpoint.snapshot(as_parts(model, optimizer, scheduler), loop, context)


def save(folder, state, info, policy, best=False):
    checkpoint_files.commit(folder, checkpoint_files.serialize(state), info, policy, best)


def save_steps(folder, steps, best_steps=(), policy=KEEP):
    model, optimizer, scheduler = parts()
    for step in steps:
        train_a_little(model, optimizer, scheduler, 1)
        info = {"epoch": 1, "step": step, "batch_in_epoch": 0, "metric": float(step)}
        save(folder, snapshot(model, optimizer, scheduler, step), info, policy,
                        best=step in best_steps)  # fmt: skip


def walk_types(obj):
    yield type(obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield type(k)
            yield from walk_types(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from walk_types(v)


def test_round_trip_restores_every_part_and_the_random_streams(tmp_path):
    model, optimizer, scheduler = parts()
    train_a_little(model, optimizer, scheduler)
    state = snapshot(model, optimizer, scheduler)
    save(tmp_path, state, {"epoch": 2, "step": 6, "metric": 0.5}, KEEP)
    expected_next = (random.random(), np.random.rand(), torch.rand(3))

    model2, optimizer2, scheduler2 = parts(seed=1)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    loaded, entry = checkpoint_files.load_latest(tmp_path)
    loop, rng = checkpoint.restore(loaded, as_parts(model2, optimizer2, scheduler2), World())
    checkpoint.restore_rng(rng)

    assert entry["name"] == "step_6.pt" and loop == LoopState(**LOOP | {"step": 6})
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert scheduler2.state_dict() == scheduler.state_dict()
    # The optimizer's moments and step counts, and its param groups (lr after the schedule).
    a, b = optimizer.state_dict(), optimizer2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, values in a["state"].items():
        for name, value in values.items():
            assert torch.equal(value, b["state"][index][name]), (index, name)
    assert (random.random(), np.random.rand()) == expected_next[:2]
    assert torch.equal(torch.rand(3), expected_next[2])
    # And they go on the same: one more identical step lands on identical weights.
    for m, opt, sched in ((model, optimizer, scheduler), (model2, optimizer2, scheduler2)):
        torch.manual_seed(5)
        m.eval()  # no dropout draw: both see the same function
        train_a_little(m, opt, sched, 1)
    for x, y in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(x, y)


def test_checkpoint_holds_only_plain_types_and_loads_with_weights_only(tmp_path):
    state = snapshot(*parts())
    assert set(walk_types(state)) <= set(PLAIN)
    save(tmp_path, state, {"epoch": 2, "step": 6, "metric": None}, KEEP)
    torch.load(tmp_path / "last.pt", weights_only=True)  # no allowlist needed


def test_files_links_and_manifest(tmp_path):
    save_steps(tmp_path, [1, 2], best_steps=[1])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["last"] == "step_2.pt" and manifest["best"] == "step_1.pt"
    payload = (tmp_path / "step_2.pt").read_bytes()
    assert manifest["files"]["step_2.pt"]["sha256"] == hashlib.sha256(payload).hexdigest()
    # last.pt and best.pt are the same files (hard links), not second copies.
    assert os.path.samefile(tmp_path / "last.pt", tmp_path / "step_2.pt")
    assert os.path.samefile(tmp_path / "best.pt", tmp_path / "step_1.pt")
    assert checkpoint_files.load(tmp_path / "best.pt")["loop"]["step"] == 1


def test_rotation_keeps_last_best_and_top_k_and_never_touches_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "step_999.pt").write_bytes(b"not committed: not ours to delete")
    save_steps(tmp_path, [1, 2, 3, 4, 5, 6], [1, 3], policy=Policy(keep_last=2, top_k=2))
    kept = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert kept == ["step_1.pt", "step_3.pt", "step_5.pt", "step_6.pt", "step_999.pt"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"step_1.pt", "step_3.pt", "step_5.pt", "step_6.pt"}
    assert (tmp_path / "notes.txt").read_text() == "mine"
    save_steps(tmp_path, [7], policy=Policy(keep_last=2, top_k=1))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"step_3.pt", "step_6.pt", "step_7.pt"}  # best is step_3


def corrupt_zero(path):
    path.write_bytes(b"")


def corrupt_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", [corrupt_zero, corrupt_half, corrupt_flip], ids=["empty", "half", "flipped-byte"]
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog):
    save_steps(tmp_path, [1, 2])
    damage(tmp_path / "step_2.pt")  # in place: last.pt is the same file, damaged too
    ckpt, entry = checkpoint_files.load_latest(tmp_path)
    assert entry["name"] == "step_1.pt" and ckpt["loop"]["step"] == 1
    assert "step_2.pt: size or sha256 differs from manifest.json" in caplog.text
    assert "resuming from the older step_1.pt" in caplog.text


def test_a_file_the_manifest_never_committed_is_not_loaded(tmp_path, caplog):
    save_steps(tmp_path, [1, 2])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["files"]["step_2.pt"]  # as if the run died before committing step 2
    manifest["last"] = "step_1.pt"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    _, entry = checkpoint_files.load_latest(tmp_path)
    assert entry["name"] == "step_1.pt"
    with pytest.raises(CheckpointError, match="not a committed checkpoint"):
        checkpoint_files.load(tmp_path / "step_2.pt")


def test_no_good_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    save_steps(tmp_path, [1, 2])
    corrupt_half(tmp_path / "step_1.pt")
    corrupt_flip(tmp_path / "step_2.pt")
    with pytest.raises(CheckpointError, match=r"no good checkpoint to resume from .*Nothing was"):
        checkpoint_files.load_latest(tmp_path)
    with pytest.raises(CheckpointError, match=r"manifest\.json lists none"):
        checkpoint_files.load_latest(tmp_path / "empty")


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_code_is_refused_and_runs_nothing(tmp_path, caplog):
    save_steps(tmp_path, [1, 2])
    marker = tmp_path / "pwned"
    evil = RunsCode()
    evil.marker = marker
    payload = pickle.dumps({"schema_version": 1, "model": evil}, protocol=2)
    (tmp_path / "step_2.pt").unlink()
    (tmp_path / "step_2.pt").write_bytes(payload)
    # Even a manifest that vouches for the file's hash does not get it unpickled with code.
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    digest = hashlib.sha256(payload).hexdigest()
    manifest["files"]["step_2.pt"] |= {"sha256": digest, "size": len(payload)}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a trainlab checkpoint"):
        checkpoint_files.load(tmp_path / "step_2.pt")
    _, entry = checkpoint_files.load_latest(tmp_path)
    assert entry["name"] == "step_1.pt"
    assert not marker.exists()


def test_stale_temp_files_are_swept(tmp_path):
    (tmp_path / ".step_3.pt.abc123.tmp").write_bytes(b"half a save")
    (tmp_path / "keep.tmp").write_bytes(b"not ours: no leading dot")
    assert [p.name for p in checkpoint_files.sweep_temp_files(tmp_path)] == [
        ".step_3.pt.abc123.tmp"
    ]
    assert (tmp_path / "keep.tmp").exists()


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    save_steps(tmp_path, [1])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    message = r"could not write .*step_2\.pt \(No space left on device\).*intact \(disk full\?\)"
    with pytest.raises(CheckpointSaveError, match=message):
        save_steps(tmp_path, [2])
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    checkpoint_files.load_latest(tmp_path)


def test_file_size_limit_in_a_child_process(tmp_path):
    """RLIMIT_FSIZE set in a child: the second, bigger checkpoint cannot be written; the first
    stays byte-identical, no temp file is left, and the message says why."""
    script = textwrap.dedent(f"""
        import resource, sys, torch
        from pathlib import Path
        from trainlab import checkpoint_files
        from trainlab.config import CheckpointConfig
        folder = Path({str(tmp_path)!r})
        policy = CheckpointConfig(keep_last=2, top_k=1)
        def save(state, info):
            checkpoint_files.commit(folder, checkpoint_files.serialize(state), info, policy)
        small, big = torch.zeros(1000), torch.zeros(100_000)
        save({{"schema_version": 1, "w": small}}, {{"step": 1}})
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
        try:
            save({{"schema_version": 1, "w": big}}, {{"step": 2}})
        except checkpoint_files.CheckpointSaveError as e:
            print(e)
            sys.exit(7)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 7, done.stderr
    assert "could not write" in done.stdout and "File too large" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "manifest.json", "step_1.pt"]
    assert checkpoint_files.load_latest(tmp_path)[1]["name"] == "step_1.pt"


def test_unwrap_finds_the_plain_module():
    inner = nn.Linear(2, 2)
    wrapped = nn.Module()
    wrapped.module = inner
    assert checkpoint.unwrap(wrapped) is inner
    assert checkpoint.unwrap(inner) is inner


# ---- the generic round trip: everything stateful() names comes back ----


def built(make_cfg, overrides, seed):
    from trainlab.config import trainer_of
    from trainlab.data import build_data
    from trainlab.parts import build_parts

    cfg = make_cfg(*overrides, f"seed={seed}")
    trainer = trainer_of(cfg)
    data = build_data(cfg.dataset, torch.device("cpu"))
    return cfg, build_parts(cfg, trainer, data, torch.device("cpu"), World())


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=mlp"],
        ["model=mlp", "optimizer=sgd", "scheduler=onecycle", "trainer.precision=fp16"],
        [
            "model=mlp",
            "optimizer=asgd",
            "scheduler=cosine_warm_restarts",
            "scheduler.interval=step",
        ],
        ["model=mlp", "scheduler=plateau"],
    ],
    ids=["adam", "sgd-onecycle-fp16", "asgd-warm-restarts", "plateau"],
)
def test_every_stateful_part_round_trips(make_cfg, overrides):
    """Train a step, snapshot, restore into parts built from another seed: every entry of
    stateful() must come back equal (tensors bitwise), and the loop state with it. A part
    added to stateful() but not restored, or saved under one name and loaded from another,
    fails here."""
    from test_resume import assert_equal_tree
    from trainlab import steps

    _, trained = built(make_cfg, overrides, seed=0)
    batch = next(trained.train.epoch(0))
    for _ in range(2):
        _, bad = steps.train_step(trained.model, [batch], trained.loss_fn, trained.optimizer,
                                 None, trained.precision)  # fmt: skip
        assert bad is None
        if trained.scheduler is not None:
            trained.scheduler.step(*([0.5] if "plateau" in overrides[-1] else []))
    state = LoopState(epoch=1, step=2, batch_in_epoch=1, best=0.25, best_step=2, nan_skips=1,
                      history=[{"epoch": 1, "step": 2, "val/loss": 0.25}])  # fmt: skip
    context = {"config": "seed: 0\n", "environment": {"torch": str(torch.__version__)}}
    saved = torch.load(io_bytes(checkpoint.snapshot(trained, state, context)), weights_only=True)

    _, fresh = built(make_cfg, overrides, seed=1)
    before = copy.deepcopy(checkpoint.stateful(fresh)["model"].state_dict())
    restored, rng = checkpoint.restore(saved, fresh, World())

    names = checkpoint.stateful(trained)
    assert names.keys() == checkpoint.stateful(fresh).keys()
    for name, part in names.items():
        other = checkpoint.stateful(fresh)[name]
        assert (part is None) == (other is None), name
        if part is not None:
            assert_equal_tree(part.state_dict(), other.state_dict(), name)
    # The fresh parts really were different before the restore (the test can fail).
    with pytest.raises(AssertionError):
        assert_equal_tree(names["model"].state_dict(), before, "model")
    assert restored == state and rng is not None


def io_bytes(snapshot):
    import io

    return io.BytesIO(checkpoint_files.serialize(snapshot))
