"""The verbs after training: progress and summary lines, eval, predict, export (with a reload
of the exported weights), and `trainlab tensorboard` on the loopback interface."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_cli
from trainlab import cli, export, rundir, train
from trainlab.evaluation import rebuild

CSV = ["dataset=csv", "model=mlp", "dataset.features=[f1,f2,f3,f4]", "trainer.batch_size=16"]


def test_progress_lines_and_summary_when_output_is_not_a_terminal(tmp_path, data_dir):
    args = [
        f"paths.output_dir={tmp_path / 'outputs'}", f"paths.data_dir={data_dir}",
        "trainer.max_epochs=2", "trainer.log_every_n_steps=10", "model=mlp",
    ]  # fmt: skip
    done = run_cli("train", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    progress = re.findall(
        r"^epoch (\d)/2  step (\d+)/36  loss [\d.]+  acc [\d.]+  [\d.]+ it/s  eta [\d.]+s$",
        done.stdout,
        re.MULTILINE,
    )
    # A line at every log point: steps 10, 20, 30 of epoch 1; 40, 50, 60, 70 are 4, 14, ...
    assert progress == [("1", "10"), ("1", "20"), ("1", "30"), ("2", "4"), ("2", "14"),
                        ("2", "24"), ("2", "34")]  # fmt: skip
    assert "\r" not in done.stdout + done.stderr  # no bar redrawn in a log file
    results = json.loads((run_dir / "metrics.json").read_text())
    best = results["best"]
    summary = done.stdout[done.stdout.index("summary\n") :].splitlines()
    assert summary[1] == (
        f"  best:        epoch {best['epoch']} of 2, val/acc {best['val/acc']:.4f} "
        "(checkpoints/best.pt)"
    )
    test = results["test"]
    assert (
        summary[2]
        == f"  test:        test/loss {test['test/loss']:.4f}  test/acc {test['test/acc']:.4f}"
    )
    assert re.fullmatch(r"  time:        [\d.]+s in all, [\d.]+s training \(72 steps\)", summary[3])
    assert summary[4:] == [
        f"  outputs:     {run_dir}",
        f"  tensorboard: trainlab tensorboard {run_dir}",
    ]


def test_a_bar_on_a_terminal(make_cfg, tmp_path, capsys):
    cfg = make_cfg("model=mlp", "trainer.progress=bar", "trainer.max_epochs=1")
    train.run(cfg, rundir.claim(tmp_path / "run"), launch=None)
    err = capsys.readouterr().err
    assert "epoch 1/1:" in err and "/36 [" in err and "step/s" in err


@pytest.fixture
def finished_run(make_cfg, tmp_path) -> Path:
    """A tiny CSV run trained with a model size its YAML does not have (hidden_sizes=[7]):
    eval and export must take it from the run, with no flag repeating it."""
    cfg = make_cfg(*CSV, "model.hidden_sizes=[7]", "trainer.max_epochs=3")
    run_dir = rundir.claim(tmp_path / "run")
    train.run(cfg, run_dir, launch=None)
    return run_dir


def test_eval_rebuilds_the_run_and_reproduces_its_test_metrics(finished_run, capsys):
    assert cli.main(["eval", str(finished_run)]) == 0
    written = json.loads((finished_run / "eval" / "test-best.json").read_text())
    tested = json.loads((finished_run / "metrics.json").read_text())
    assert written["metrics"] == tested["test"]
    assert written["step"] == tested["best"]["step"]
    out = capsys.readouterr().out
    assert f"test/acc     {tested['test']['test/acc']:.4f}" in out
    assert cli.main(["eval", str(finished_run), "--split", "val", "--checkpoint", "last"]) == 0
    last = json.loads((finished_run / "eval" / "val-last.json").read_text())
    final = tested["final"]
    assert last["metrics"]["val/acc"] == final["val/acc"]
    assert abs(last["metrics"]["val/loss"] - final["val/loss"]) < 1e-9


def test_predict_writes_one_row_per_input(finished_run, data_dir, tmp_path):
    out = tmp_path / "predictions.csv"
    table = data_dir / "table.csv"
    assert (
        cli.main(["predict", str(finished_run), "--input", str(table), "--output", str(out)]) == 0
    )
    rows = list(csv.DictReader(out.open()))
    inputs = list(csv.DictReader(table.open()))
    assert len(rows) == len(inputs)
    classes = sorted({r["label"] for r in inputs})
    assert list(rows[0]) == ["input", "prediction", *(f"p_{c}" for c in classes)]
    model = rebuild(finished_run, "best").model
    x = torch.tensor([[float(r[f"f{i}"]) for i in range(1, 5)] for r in inputs])
    with torch.no_grad():
        expected = [classes[i] for i in model(x).argmax(-1).tolist()]
    assert [r["prediction"] for r in rows] == expected
    for r in rows:
        assert abs(sum(float(r[f"p_{c}"]) for c in classes) - 1) < 1e-5


def test_predict_for_a_regression_table_writes_the_outputs(make_cfg, data_dir, tmp_path):
    regression = ["dataset.task=regression", "dataset.target=score", "dataset.num_outputs=1",
                  "dataset.monitor=val/rmse", "loss=mse", "trainer.max_epochs=30"]  # fmt: skip
    run_dir = rundir.claim(tmp_path / "run")
    train.run(make_cfg(*CSV, *regression), run_dir, launch=None)
    # New inputs without the target (or any other) column than the features.
    table = list(csv.DictReader((data_dir / "table.csv").open()))
    features = [f"f{i}" for i in range(1, 5)]
    new = tmp_path / "new.csv"
    new.write_text(
        "\n".join([",".join(features), *(",".join(r[f] for f in features) for r in table)]) + "\n"
    )
    assert cli.main(["predict", str(run_dir), "--input", str(new)]) == 0
    rows = list(csv.DictReader((run_dir / "predictions" / "new.csv").open()))
    assert list(rows[0]) == ["input", "output_0"] and len(rows) == len(table)
    model = rebuild(run_dir, "best").model
    x = torch.tensor([[float(r[f]) for f in features] for r in table])
    with torch.no_grad():
        want = model(x)[:, 0].tolist()
    got = [float(r["output_0"]) for r in rows]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    # And it learnt the target (the features' sum): far better than predicting its mean.
    score = torch.tensor([float(r["score"]) for r in table])
    rmse = (torch.tensor(got) - score).pow(2).mean().sqrt()
    assert rmse < 0.5 * score.std(), (rmse, score.std())


def test_predict_on_image_files(make_cfg, data_dir, tmp_path):
    overrides = [
        "dataset=image_folder",
        "model=cnn",
        "dataset.num_workers=0",
        "trainer.batch_size=8",
    ]
    histograms = "trainer.tensorboard.histograms_every_n_epochs=1"
    cfg = make_cfg(*overrides, "trainer.max_epochs=1", histograms)
    run_dir = rundir.claim(tmp_path / "run")
    train.run(cfg, run_dir, launch=None)
    board = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "histograms": 0})
    board.Reload()
    tags = board.Tags()
    assert set(tags["images"]) == {"examples/train", "test/confusion_matrix"}
    shown = board.Images("examples/train")[0]
    assert (shown.width, shown.height) == (32 * 8, 32 * 2)  # 16 images, 8 a row
    assert tags["graph"] is True
    assert {"weights/head.weight", "grads/head.weight"} <= set(tags["histograms"])
    confusion = json.loads((run_dir / "metrics.json").read_text())["test_confusion_matrix"]
    assert len(confusion) == 2 and sum(map(sum, confusion)) == 6  # the 6 held-out images
    images = data_dir / "images" / "train" / "dogs"
    assert cli.main(["predict", str(run_dir), "--input", str(images)]) == 0
    rows = list(csv.DictReader((run_dir / "predictions" / "dogs.csv").open()))
    assert len(rows) == len(list(images.iterdir()))
    assert {r["prediction"] for r in rows} <= {"cats", "dogs"}
    assert set(rows[0]) == {"input", "prediction", "p_cats", "p_dogs"}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_reloads_into_a_fresh_model_with_identical_outputs(finished_run, tmp_path, capsys):
    model = rebuild(finished_run, "best").model
    x = torch.randn(5, 4)
    with torch.no_grad():
        want = model(x)
    assert cli.main(["export", str(finished_run)]) == 0
    folder = finished_run / "export"
    fresh = export.load_model(folder / "config.yaml", folder / "model.safetensors")
    assert fresh is not model and next(fresh.parameters()).shape == (7, 4)
    with torch.no_grad():
        assert torch.equal(fresh(x), want)
    assert b"pickle" not in (folder / "model.safetensors").read_bytes()[:200]

    assert cli.main(["export", str(finished_run), "--format", "torchscript"]) == 0
    scripted = torch.jit.load(str(folder / "model.torchscript.pt"))
    with torch.no_grad():
        assert torch.equal(scripted(x), want)


@pytest.mark.slow
def test_onnx_export_runs_without_torch_with_the_same_outputs(finished_run, capsys, monkeypatch):
    """ONNX (the `export` extra): checked by onnx, run by onnx's reference evaluator on a
    batch of another size than the one it was traced with, equal to the model's outputs."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = rebuild(finished_run, "best").model
    x = torch.randn(5, 4)
    with torch.no_grad():
        want = model(x).numpy()
    assert cli.main(["export", str(finished_run), "--format", "onnx"]) == 0
    path = finished_run / "export" / "model.onnx"
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    # The batch axis is symbolic (the reference evaluator would not refuse a fixed one; a
    # runtime such as onnxruntime does).
    (batch, features) = graph.graph.input[0].type.tensor_type.shape.dim
    assert batch.dim_param and not batch.dim_value and features.dim_value == 4
    session = ReferenceEvaluator(str(path))
    (got,) = session.run(None, {"input": x.numpy()})
    assert got.shape == want.shape == (5, 3) and abs(got - want).max() < 1e-5
    (one,) = session.run(None, {"input": x[:1].numpy()})
    assert one.shape == (1, 3) and abs(one - want[:1]).max() < 1e-5

    # Without the packages: exit 2, saying what to install, and nothing written.
    path.unlink()
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real(name, *a),
    )
    capsys.readouterr()
    assert cli.main(["export", str(finished_run), "--format", "onnx"]) == 2
    assert "needs the onnxscript package(s), which are not installed: pip install onnxscript" in (
        capsys.readouterr().err
    )
    assert not path.exists()


@pytest.mark.slow
def test_tensorboard_serves_a_run_on_loopback_only(finished_run, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainlab", "tensorboard", str(finished_run), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        url = re.search(r"at (http://\S+/)", line).group(1)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert url.startswith("http://127.0.0.1:")
        tags = _get_json(f"{url}data/plugin/scalars/tags")
        assert "train/loss" in tags["tb"] and "val/acc" in tags["tb"]
        points = _get_json(f"{url}data/plugin/scalars/scalars?run=tb&tag=val/acc")
        history = json.loads((finished_run / "metrics.json").read_text())
        assert len(points) == history["epochs"]
        assert points[-1][2] == pytest.approx(history["final"]["val/acc"])
        assert _listening_addresses(port) == {"127.0.0.1"}
        other = _non_loopback_address()
        if other is not None:  # nothing answers on the machine's other address
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_tensorboard_on_a_busy_port_is_one_line_with_the_fix(finished_run, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("tensorboard", str(finished_run), "--port", str(port), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    # (TensorBoard's own NOTE on its data loader may come first)
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1] == (
        f"error: --port {port} is in use (another TensorBoard?); pick another with "
        f"--port {port + 1}, or --port 0 for any free one"
    )


@pytest.mark.slow
def test_tensorboard_bind_all_warns_and_listens_on_every_interface(finished_run):
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainlab", "tensorboard", str(finished_run), "--port", "0",
         "--bind-all"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        warning = proc.stderr.readline()
        assert warning.startswith("warning: --bind-all serves on every network interface")
        url = re.search(r"at (http://\S+/)", proc.stdout.readline()).group(1)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert _listening_addresses(port) & {"0.0.0.0", "::"}, _listening_addresses(port)
        assert "train/loss" in _get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")["tb"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get_json(url: str) -> object:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                data = json.loads(response.read())
            if data:
                return data
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(url)
        time.sleep(0.5)  # TensorBoard loads event files in the background


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of listening TCP sockets on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, _, state = row.split()[1], row.split()[2], row.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                if len(address) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add("::" if set(address) == {"0"} else address)
    return found


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a source address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address
