"""The checkpoint dict: plain types, atomic writes, hash-checked weights_only loads, RNG."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from trainlab import checkpoint
from trainlab.checkpoint import CheckpointError

# What torch.load(weights_only=True) reads without an allowlist (state_dict() is an OrderedDict).
PLAIN = (dict, OrderedDict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


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


def snapshot(model, optimizer, scheduler):
    loop = {"epoch": 2, "step": 6, "best": 0.5, "history": [{"epoch": 1, "val/loss": 0.7}]}
    env = {"torch": str(torch.__version__), "num_threads": 1}
    return checkpoint.state_dict(model, optimizer, scheduler, loop, {"seed": 0}, env)


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
    checkpoint.save(tmp_path, ["last.pt"], state, {"epoch": 2, "step": 6, "metric": 0.5})
    expected_next = (random.random(), np.random.rand(), torch.rand(3))

    model2, optimizer2, scheduler2 = parts(seed=1)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    loaded = checkpoint.load(tmp_path / "last.pt")
    loop = checkpoint.restore(loaded, model2, optimizer2, scheduler2)

    assert loop == state["loop"]
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert (random.random(), np.random.rand()) == expected_next[:2]
    assert torch.equal(torch.rand(3), expected_next[2])


def test_checkpoint_holds_only_plain_types_and_loads_with_weights_only(tmp_path):
    state = snapshot(*parts())
    assert set(walk_types(state)) <= set(PLAIN)
    checkpoint.save(tmp_path, ["last.pt"], state, {"epoch": 2, "step": 6, "metric": None})
    torch.load(tmp_path / "last.pt", weights_only=True)  # no allowlist needed


def test_save_is_atomic_and_committed_by_the_manifest(tmp_path):
    state = snapshot(*parts())
    checkpoint.save(tmp_path, ["last.pt", "best.pt"], state, {"epoch": 2, "step": 6, "metric": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "manifest.json"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    payload = (tmp_path / "last.pt").read_bytes()
    assert manifest["files"]["last.pt"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert manifest["files"]["best.pt"]["step"] == 6
    assert (tmp_path / "best.pt").read_bytes() == payload


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    model, optimizer, scheduler = parts()
    checkpoint.save(tmp_path, ["last.pt"], snapshot(model, optimizer, scheduler), {"step": 1})
    before = (tmp_path / "last.pt").read_bytes()
    train_a_little(model, optimizer, scheduler)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(tmp_path, ["last.pt"], snapshot(model, optimizer, scheduler), {"step": 2})
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "manifest.json"]
    checkpoint.load(tmp_path / "last.pt")


def test_a_flipped_byte_is_caught_by_the_hash(tmp_path):
    checkpoint.save(tmp_path, ["last.pt"], snapshot(*parts()), {"step": 1})
    data = bytearray((tmp_path / "last.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "last.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last\.pt: size or sha256 differs"):
        checkpoint.load(tmp_path / "last.pt")


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = RunsCode()
    evil.marker = marker
    payload = pickle.dumps({"schema_version": 1, "model": evil}, protocol=2)
    (tmp_path / "last.pt").write_bytes(payload)
    # Even a manifest that vouches for the file's hash does not get it unpickled with code.
    entry = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"last.pt": entry}}))
    with pytest.raises(CheckpointError, match="not a trainlab checkpoint"):
        checkpoint.load(tmp_path / "last.pt")
    assert not marker.exists()


def test_unwrap_finds_the_plain_module():
    inner = nn.Linear(2, 2)
    wrapped = nn.Module()
    wrapped.module = inner
    assert checkpoint.unwrap(wrapped) is inner
    assert checkpoint.unwrap(inner) is inner
