#!/usr/bin/env python
"""trainlab's loop against hand-written PyTorch loops: the same model, data, batch size and seed,
in one process, interleaved. Prints ms/step, samples/s and ratios, start-up times and the
checkpoint overhead of the default run, and writes it all to a JSON file.

    .venv/bin/python scripts/bench.py                  # CPU: an MLP on 20,000 in-memory samples
    .venv/bin/python scripts/bench.py --device cuda    # GPU: ResNet-9 on 50,000 images, bf16

Not a test: on a shared machine timings are noisy, so only ratios within one run count.
Lightning gets a row when it is installed (pip install -e .[bench]).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from trainlab import checkpoint_files
from trainlab.parts import LoopState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # conftest.compose_cfg: compose conf/ in-process

WORKLOADS = {
    "cpu": {
        "overrides": [
            "dataset=synthetic_classification",
            "model=mlp",
            "model.hidden_sizes=[256,256]",
            "optimizer=sgd",
            "optimizer.lr=0.05",
            "trainer.batch_size=128",
        ],
        "describe": "MLP 64-256-256-10 on 20,000 in-memory samples, batch 128, fp32, SGD",
    },
    "cuda": {
        "overrides": [
            "dataset=synthetic_classification",
            "dataset.input_shape=[3,32,32]",
            "dataset.num_features=3072",
            "dataset.num_train=50000",
            "model=resnet9",
            "model.width=32",
            "optimizer=sgd",
            "optimizer.lr=0.05",
            "optimizer.nesterov=true",
            "trainer.batch_size=512",
            "trainer.precision=bf16",
            "trainer.channels_last=true",
        ],
        "describe": "ResNet-9 (width 32) on 50,000 synthetic 3x32x32 images, batch 512, bf16, "
        "channels_last, SGD",
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs per variant per round (the first warms up)"
    )
    parser.add_argument("--tiny", action="store_true", help="a few hundred samples (for the tests)")
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument(
        "--checkpoint-epochs", type=int, default=30, help="default-run epochs timed"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench.json")
    args = parser.parse_args()

    import torch

    from trainlab import rundir, train
    from trainlab.data import build_data, epoch_order

    work = WORKLOADS[args.device]
    tmp = Path(tempfile.mkdtemp(prefix="trainlab-bench-"))
    overrides = [
        *work["overrides"],
        f"paths.output_dir={tmp}",
        f"paths.data_dir={ROOT / 'data'}",
        f"trainer.accelerator={args.device}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.checkpoint.every_n_epochs=null",
        "trainer.val_every_epochs=1000",
    ]
    if args.tiny:
        overrides += ["dataset.num_train=600", "dataset.num_test=100", "trainer.batch_size=32"]
    from conftest import compose_cfg

    cfg = compose_cfg(overrides)
    device = torch.device(args.device)
    data = build_data(cfg.dataset, device)
    batch, n = cfg.trainer.batch_size, len(data.train)
    steps = -(-n // batch)

    def model_and_optimizer():
        from trainlab.build import build_model, build_optimizer

        torch.manual_seed(cfg.seed)
        layout = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
        model = build_model(cfg.model).to(device, memory_format=layout)
        return model, build_optimizer(cfg.optimizer, model), layout

    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.trainer.precision]
    loss_fn = torch.nn.CrossEntropyLoss()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def hand_step(model, optimizer, x, y):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    def hand_indexing() -> list[float]:
        """The tuned hand loop: data resident on the device, batches by indexing a permutation."""
        model, optimizer, layout = model_and_optimizer()
        x_all, y_all = (
            data.train.x.contiguous(memory_format=layout)
            if data.train.x.dim() == 4
            else data.train.x,
            data.train.y,
        )
        times = []
        for epoch in range(args.epochs):
            sync()
            start = time.perf_counter()
            order = epoch_order(n, True, cfg.seed, epoch).to(device)
            for i in range(steps):
                idx = order[i * batch : (i + 1) * batch]
                hand_step(model, optimizer, x_all[idx], y_all[idx])
            sync()
            times.append((time.perf_counter() - start) / steps)
        return times

    def hand_dataloader() -> list[float]:
        """The usual hand loop: TensorDataset + DataLoader with per-sample collation."""
        from torch.utils.data import DataLoader, TensorDataset

        model, optimizer, layout = model_and_optimizer()
        dataset = TensorDataset(data.train.x.cpu(), data.train.y.cpu())
        gpu = device.type == "cuda"
        loader = DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            num_workers=4 if gpu else 0,
            pin_memory=gpu,
            persistent_workers=gpu,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        times = []
        for _ in range(args.epochs):
            sync()
            start = time.perf_counter()
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                if x.dim() == 4:
                    x = x.contiguous(memory_format=layout)
                hand_step(model, optimizer, x, y.to(device, non_blocking=True))
            sync()
            times.append((time.perf_counter() - start) / steps)
        return times

    def trainlab_loop() -> list[float]:
        """trainlab's own loop (train.run): its epoch timer covers the training batches and
        their logging, not validation or checkpoints."""
        run_dir = rundir.claim(tmp / "runs" / "bench")
        train.run(cfg, run_dir, launch=None)
        history = json.loads((run_dir / "metrics.json").read_text())
        del history

        records = LoopState.from_state_dict(
            checkpoint_files.load(run_dir / "checkpoints" / "last.pt")["loop"]
        ).history
        return [r["time/epoch_s"] / steps for r in records]

    variants = {
        "trainlab": trainlab_loop,
        "hand, indexing": hand_indexing,
        "hand, DataLoader": hand_dataloader,
    }
    if importlib.util.find_spec("lightning") is not None:
        variants["Lightning, defaults"] = lambda: lightning_loop(
            cfg, data, device, args.epochs, steps, loss_fn
        )

    print(f"workload: {work['describe']}" + (" (tiny)" if args.tiny else ""))
    per_step: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: interleaved, fair
        for name in order:
            times = variants[name]()
            per_step[name] += times[1:] if len(times) > 1 else times  # the first epoch warms up
        print(f"round {r + 1}/{args.repeats} done")

    medians = {name: statistics.median(t) for name, t in per_step.items()}
    rows = []
    for name in names:
        ms = medians[name] * 1000
        rows.append(
            {
                "variant": name,
                "ms_per_step": ms,
                "samples_per_s": batch / medians[name],
                "vs_hand_indexing": medians[name] / medians["hand, indexing"],
                "vs_hand_dataloader": medians[name] / medians["hand, DataLoader"],
            }
        )
    print()
    print("| variant | ms/step | samples/s | time vs hand indexing | time vs hand DataLoader |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['ms_per_step']:.3f} | {row['samples_per_s']:,.0f} | "
            f"{row['vs_hand_indexing']:.3f} | {row['vs_hand_dataloader']:.3f} |"
        )

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "workload": work["describe"] + (" (tiny)" if args.tiny else ""),
        "samples": n,
        "batch_size": batch,
        "steps_per_epoch": steps,
        "repeats": args.repeats,
        "epochs_per_repeat": args.epochs,
        "per_step_s": per_step,
        "rows": rows,
    }
    if not args.skip_startup:
        result["startup_s"] = startup_times(tmp)
        for what, seconds in result["startup_s"].items():
            print(f"start-up: {what}: {seconds:.2f} s")
    result["checkpoint"] = checkpoint_overhead(tmp, args.checkpoint_epochs if not args.tiny else 2)
    c = result["checkpoint"]
    print(
        f"checkpoint every epoch on the default run: {c['checkpoint_s']:.2f} s of "
        f"{c['train_s']:.2f} s training = {100 * c['fraction']:.2f}%"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0


def lightning_loop(cfg, data, device, epochs, steps, loss_fn) -> list[float]:
    """Lightning's Trainer with its defaults (logger, checkpointing, progress bar) on the same
    model, data (DataLoader) and optimizer; per-step time from its own epoch boundaries."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from trainlab.build import build_model, build_optimizer

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    times: list[float] = []

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, index):
            x, y = batch
            return loss_fn(self.model(x), y)

        def configure_optimizers(self):
            return build_optimizer(cfg.optimizer, self.model)

    class Timer(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            times.append((time.perf_counter() - self.start) / steps)

    gpu = device.type == "cuda"
    loader = DataLoader(
        TensorDataset(data.train.x.cpu(), data.train.y.cpu()),
        batch_size=cfg.trainer.batch_size,
        shuffle=True,
        num_workers=4 if gpu else 0,
        pin_memory=gpu,
        persistent_workers=gpu,
    )
    precision = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[cfg.trainer.precision]
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator=device.type,
            devices=1,
            precision=precision,
            default_root_dir=root,
            callbacks=[Timer()],
            enable_model_summary=False,
        )
        trainer.fit(Module(), loader)
    return times


def startup_times(tmp: Path) -> dict[str, float]:
    """Median of three fresh processes each."""
    python = sys.executable
    commands = {
        "import torch": [python, "-c", "import torch"],
        "import torch, torchvision, hydra, tensorboard": [
            python,
            "-c",
            "import torch, torchvision, hydra, torch.utils.tensorboard",
        ],
        "trainlab train --help": [python, "-m", "trainlab", "train", "--help"],
    }
    if importlib.util.find_spec("lightning") is not None:
        commands["import lightning"] = [python, "-c", "import lightning"]
    out = {}
    for what, command in commands.items():
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            runs.append(time.perf_counter() - start)
        out[what] = statistics.median(runs)
    done = subprocess.run(
        [
            python,
            "-m",
            "trainlab",
            "train",
            "trainer.max_steps=1",
            f"paths.output_dir={tmp}",
            f"paths.data_dir={ROOT / 'data'}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    match = re.search(r"first step ([\d.]+)s after start", done.stdout)
    if match:
        out["default run: time to first step"] = float(match.group(1))
    return out


def checkpoint_overhead(tmp: Path, epochs: int) -> dict[str, float]:
    """The default run (cnn1d on MNIST-1D) with a checkpoint every epoch: time spent saving."""
    from conftest import compose_cfg
    from trainlab import rundir, train

    cfg = compose_cfg(
        [
            f"paths.output_dir={tmp}",
            f"paths.data_dir={ROOT / 'data'}",
            f"trainer.max_epochs={epochs}",
        ]
    )
    results = train.run(cfg, rundir.claim(tmp / "runs" / "default"), launch=None)
    return {
        "epochs": epochs,
        "train_s": results["train_s"],
        "checkpoint_s": results["checkpoint_s"],
        "fraction": results["checkpoint_s"] / results["train_s"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
