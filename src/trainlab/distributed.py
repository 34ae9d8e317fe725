"""torchrun/DDP: the process group from torchrun's environment, and the few collectives the run
needs. Rank 0 alone writes files; every decision that changes control flow (stop, diverged,
early stop) is made on values every rank agrees on, so no rank waits in a collective alone.
A single process is a world of one, and every helper here is then a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from trainlab.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes config, logs, TensorBoard and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_world() -> World:
    """What torchrun (or any launcher setting RANK/WORLD_SIZE/LOCAL_RANK) started: read from the
    environment, so it is known before torch is imported. A SLURM job that submitit started
    with several tasks gets those variables from submitit's own helper first."""
    if "RANK" not in os.environ and _submitit_tasks() > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    return World(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    )


def _submitit_tasks() -> int:
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return 1
    return int(os.environ.get("SLURM_NTASKS", "1"))


def setup(devices: int, accelerator: str) -> tuple[World, torch.device]:
    """Check trainer.devices against how the processes were launched, pick the device, and
    join the process group (NCCL on GPUs, gloo on the CPU) when there is more than one.
    Idempotent: a second call finds the group joined."""
    world = launched_world()
    if devices != world.size:
        if world.size == 1:
            raise ConfigError(
                f"trainer.devices={devices}: this is one process; start {devices} with "
                f"torchrun --nproc_per_node={devices} -m trainlab train trainer.devices={devices}"
                " ... (README: Scale out)"
            )
        raise ConfigError(
            f"trainer.devices={devices}: torchrun started {world.size} processes; set "
            f"trainer.devices={world.size} (the world size) or start {devices}"
        )
    device = pick_device(accelerator, world)
    if world.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    return world, device


def pick_device(accelerator: str, world: World) -> torch.device:
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise ConfigError(
                f"trainer.accelerator={accelerator}: local rank {world.local_rank} has no GPU "
                f"(this node has {count}); start at most {count} processes per node"
            )
        return torch.device("cuda", world.local_rank)
    if accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("trainer.accelerator=mps: no Apple GPU (MPS) here; use cpu or auto")
        if world.distributed:
            raise ConfigError("trainer.accelerator=mps: one process only (no DDP on MPS)")
        return torch.device("mps")
    if accelerator == "cuda":
        raise ConfigError(
            "trainer.accelerator=cuda: no CUDA device is visible here; use trainer.accelerator=cpu"
            " (or auto)"
        )
    return torch.device("cpu")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(value: Any) -> Any:
    """Rank 0's value, on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's value, in rank order (on every rank)."""
    if not active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the model when there are several ranks (it broadcasts
    rank 0's weights and buffers, so every rank starts from the same ones)."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def inner(model: nn.Module) -> nn.Module:
    """The module DDP wraps (compiled or not): what evaluation runs, without DDP's
    per-forward collectives, which ranks holding different numbers of batches would miss."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of every rank's value, on every rank: a flag raised on any rank (a stop
    request, a bad loss) becomes everyone's decision."""
    if not active():
        return value
    t = torch.tensor(value, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool, device: torch.device) -> bool:
    return bool(max_over_ranks(int(flag), device))


def all_reduce_(t: Tensor) -> Tensor:
    """Sum in place across ranks (every rank gets the same result)."""
    if active():
        dist.all_reduce(t)
    return t


def reduce_sums(sums: dict[str, Any]) -> dict[str, Any]:
    """A copy of running metric sums added up over the ranks: device tensors one collective
    each, host counts together in one."""
    if not active():
        return sums
    out = dict(sums)
    device = next(v.device for v in sums.values() if isinstance(v, Tensor))
    counts = [k for k, v in sums.items() if isinstance(v, int) and not isinstance(v, bool)]
    for key, value in sums.items():
        if isinstance(value, Tensor):
            out[key] = all_reduce_(value.clone())
    if counts:
        packed = all_reduce_(
            torch.tensor([sums[k] for k in counts], dtype=torch.int64, device=device)
        )
        out |= dict(zip(counts, packed.tolist(), strict=True))
    return out
