"""DDP through torchrun on the CPU (gloo, 2 ranks): one run folder, the single-process result
within float rounding, the same numbers on every rank, an exact resume after SIGTERM to the
whole group, and the rules around trainer.devices."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_cli
from test_chaos import wait_for
from test_resume import assert_same_run
from trainlab import checkpoint_files, config, distributed, rundir, train
from trainlab.data import Shard
from trainlab.errors import ConfigError

# 3600 training samples in batches of 64: 56 full batches and a tail of 16, split 8 + 8, so two
# ranks train on exactly the samples one process does.
RUN = [
    "model=mlp", "optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9",
    "trainer.batch_size=64", "trainer.num_threads=1", "trainer.log_every_n_steps=10",
    "trainer.accelerator=cpu",
]  # fmt: skip


def torchrun(
    *args: str, cwd: Path, nproc: int = 2, background: bool = False
) -> subprocess.Popen | subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "trainlab", *args,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if background:  # a session of its own: the test signals the whole process group
        return subprocess.Popen(
            command, cwd=cwd, env=env, text=True, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env, text=True, capture_output=True, timeout=300)


def rank_lines(output: str) -> dict[str, str]:
    """{"0": what rank 0 reports, "1": ...} from the `[rank r/n] ...` summary lines."""
    lines = [line for line in output.splitlines() if line.startswith("[rank ")]
    return {line[6]: line.split("]", 1)[1] for line in lines}


@pytest.mark.slow
def test_two_ranks_train_like_one_process_into_one_folder(tmp_path, data_dir, make_cfg):
    length = ["trainer.max_epochs=3"]
    one = tmp_path / "one"
    train.run(make_cfg(*RUN, *length), rundir.claim(one), launch=None)

    out = tmp_path / "out"
    args = ["train", "trainer.devices=2", f"paths.output_dir={out}", f"paths.data_dir={data_dir}"]
    done = torchrun(*args, *RUN, *length, cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout

    runs = list((out / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 made no folder of its own
    (two,) = runs
    assert len(list((two / "tb").iterdir())) == 1
    assert not list(tmp_path.glob("outputs")) and not list(tmp_path.glob(".hydra"))
    manifest = checkpoint_files.read_manifest(two / "checkpoints")
    assert manifest["files"][manifest["last"]]["step"] == 3 * 57

    a = checkpoint_files.load(one / "checkpoints" / "last.pt")["model"]
    b = checkpoint_files.load(two / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    reports = rank_lines(done.stdout)
    assert set(reports) == {"0", "1"} and reports["0"] == reports["1"], done.stdout
    metrics = json.loads((two / "metrics.json").read_text())
    assert f"test/acc {metrics['test']['test/acc']!r}" in reports["0"]
    # The test's confusion matrix counts every test sample once over both ranks, like one process.
    alone = json.loads((one / "metrics.json").read_text())
    confusion = torch.tensor(metrics["test_confusion_matrix"])
    assert confusion.sum() == sum(map(sum, alone["test_confusion_matrix"]))
    assert confusion.trace() / confusion.sum() == pytest.approx(metrics["test"]["test/acc"])
    assert json.loads((two / "run.json").read_text())["environment"]["world_size"] == 2
    assert "50 samples per process" not in done.stdout and "32 samples per process" in done.stdout


@pytest.mark.slow
def test_sigterm_to_the_group_then_two_ranks_resume_bitwise(tmp_path, data_dir):
    # Dropout: each rank's own random stream must come back on resume too.
    run = [*RUN, "model.dropout=0.3", "trainer.max_epochs=10", f"paths.data_dir={data_dir}"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = torchrun("train", "trainer.devices=2", f"hydra.run.dir={straight}", *run, cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout

    proc = torchrun(
        "train", "trainer.devices=2", f"hydra.run.dir={stopped}", *run,
        cwd=tmp_path, background=True,
    )  # fmt: skip
    assert wait_for(stopped / "train.log", "epoch 2/", 1, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    status = json.loads((stopped / "status.json").read_text())
    assert status == status | {"status": "interrupted", "reason": "SIGTERM"}, output
    manifest = checkpoint_files.read_manifest(stopped / "checkpoints")
    # Progress lines name the epoch at its log points, so it stopped somewhere past epoch 1.
    assert 57 < manifest["files"][manifest["last"]]["step"] < 10 * 57

    # One process cannot continue it as it was: refused, naming the key and the way out.
    refused = run_cli("resume", str(stopped), cwd=tmp_path)
    assert refused.returncode == 2
    assert "trainer.devices=2" in refused.stderr
    assert f"torchrun --nproc_per_node=2 -m trainlab resume {stopped}" in refused.stderr
    also = run_cli("resume", str(stopped), "trainer.devices=1", cwd=tmp_path)
    assert also.returncode == 2 and "--allow-change trainer.devices" in also.stderr
    assert json.loads((stopped / "status.json").read_text())["status"] == "interrupted"

    # Allowed, it continues on one process from a copy, with a note of what changed.
    changed = tmp_path / "changed"
    shutil.copytree(stopped, changed)
    assert train.resume(changed, ["trainer.devices=1"], ["trainer.devices"], ["test"]) == 0
    attempt = json.loads((changed / "run.json").read_text())["attempts"][-1]
    assert "world_size changed from 2 to 1" in " ".join(attempt["notes"])
    assert json.loads((changed / "status.json").read_text())["status"] == "completed"

    resumed = torchrun("resume", str(stopped), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert_same_run(straight, stopped)
    assert len(list((stopped / "tb").iterdir())) == 2  # one event file per attempt, one folder


def test_each_rank_takes_an_equal_slice_of_the_same_global_order():
    order = torch.randperm(250, generator=torch.Generator().manual_seed(0))
    one = list(Shard().batches(order, 64, 0))
    ranks = [list(Shard(r, 4, True).batches(order, 64, 0)) for r in range(4)]
    assert all(len(r) == len(one) == 4 == Shard(0, 4).count(250, 64) for r in ranks)
    for i, whole in enumerate(one[:3]):
        assert torch.equal(torch.cat([r[i] for r in ranks]), whole)
    # The tail of 58 is trimmed to 56: 14 per rank, the last 2 samples of the epoch left out.
    assert torch.equal(torch.cat([r[3] for r in ranks]), one[3][:56])
    # A tail shorter than the world is dropped; the ranks agree on the epoch's length.
    assert Shard(0, 4).count(65, 64) == 1
    assert [len(b) for b in Shard(3, 4).batches(order[:65], 64, 0)] == [16]
    # Evaluation: whole batches in turn, every sample once over all ranks.
    shares = [list(Shard(r, 3, False).batches(order, 64, 0)) for r in range(3)]
    assert sorted(torch.cat([b for s in shares for b in s]).tolist()) == list(range(250))
    assert [len(s) for s in shares] == [2, 1, 1]
    # Resuming at global batch 2 gives each rank its slice from there on.
    assert torch.equal(next(Shard(1, 4).batches(order, 64, 2)), one[2][16:32])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.devices=2", "trainer.batch_size=99"], "trainer.batch_size=99: it is the global"),
        (["trainer.devices=0"], "trainer.devices=0"),
        (["trainer.devices=2", "optimizer=lbfgs"], "trainer.devices=2: LBFGS"),
        (["trainer.devices=2", "trainer.accelerator=mps"], "trainer.devices=2: an Apple GPU"),
        (["trainer.accelerator=tpu"], "trainer.accelerator=tpu"),
    ],
)
def test_impossible_device_requests_are_config_errors(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.check(make_cfg(*overrides))


def test_more_devices_than_processes_is_refused_with_the_torchrun_command(make_cfg, monkeypatch):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(
        ConfigError, match=re.escape("torchrun --nproc_per_node=4 -m trainlab train")
    ):
        distributed.setup(4, "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(
            ConfigError, match=re.escape("trainer.accelerator=cuda: no CUDA device")
        ):
            distributed.setup(1, "cuda")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        ConfigError, match=re.escape("torchrun started 2 processes; set trainer.devices=2")
    ):
        distributed.setup(1, "cpu")


def test_a_sweep_under_torchrun_is_refused(make_cfg, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_info:
        rundir.RunFolderCallback().on_multirun_start(OmegaConf.create({}))
    assert exit_info.value.code == 2
    assert "-m under torchrun" in capsys.readouterr().err


def test_a_stop_signal_hands_on_to_the_handler_that_was_there(monkeypatch):
    """A SLURM job: submitit's handler (requeue) runs after our save."""
    from trainlab.signals import graceful_stop

    called = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: called.append(signum))
    try:
        with graceful_stop() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            deadline = time.monotonic() + 5
            while stop.signum is None and time.monotonic() < deadline:
                time.sleep(0.01)
        with pytest.raises(train.Interrupted) as stopped:
            stop.check()
        assert called == []  # only after the checkpoint
        stopped.value.hand_on()
        assert called == [signal.SIGUSR2] and stopped.value.exit_code == 128 + signal.SIGUSR2
    finally:
        signal.signal(signal.SIGUSR2, previous)
