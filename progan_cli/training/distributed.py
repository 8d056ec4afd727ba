"""Several processes (GPUs or machines) training one run through torch.distributed, launched by torchrun.

Every rank holds full copies of G, D and G_ema and takes a 1/world share of each global minibatch. After
each backward the ranks average their gradients with one all-reduce per network (the way stylegan2-ada /
stylegan3 do it), so Adam sees the gradient of the whole global batch and the ranks stay identical.
We do not wrap the networks in DistributedDataParallel: the WGAN-GP step runs D three times and
differentiates through a gradient (create_graph), and at low resolutions most parameters get no gradient at
all; DDP's per-parameter hooks handle neither well, a flat all-reduce of the gradients that exist does.

The global batch is split by stride (rank r takes samples r, r + world, ...; `data.stream.split_batch` says
why), for the reals and the latents alike.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from progan_cli.config import TrainConfig
from progan_cli.devices import resolve_device
from progan_cli.errors import UsageError


@dataclass
class Distributed:
    """This process's place among the ranks; world 1 means a plain single-process run."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and shows progress."""
        return self.rank == 0

    def sync_grads(self, module: nn.Module) -> None:
        """Average the existing gradients of `module` over all ranks (one flat all-reduce)."""
        if self.world == 1:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        for g, synced in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(synced.view_as(g))

    def broadcast_(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if self.world == 1:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(t, src=0)

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average same-shaped float tensors over the ranks, in place."""
        if self.world == 1 or not tensors:
            return
        flat = torch.stack(tensors)
        torch.distributed.all_reduce(flat)
        flat /= self.world
        for t, v in zip(tensors, flat):
            t.copy_(v)

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says True (e.g. a SIGINT that reached one of them)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device_name: str) -> tuple[Distributed, str | None]:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK), or stay alone without one.

    nccl on CUDA, gloo on the CPU. Each rank uses the GPU numbered by its LOCAL_RANK. A single process on
    `cuda:N` makes N its current device, so no library call opens a stray context on GPU 0.
    """
    device = resolve_device(device_name)
    note = ("no CUDA GPU visible: training on the CPU (--device cpu says so quietly)"
            if device_name == "auto" and device.type == "cpu" else None)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return Distributed(device=device), note
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        local = os.environ.get("LOCAL_RANK")
        if local is None:
            raise UsageError(f"WORLD_SIZE={world} is set but LOCAL_RANK is not, so every rank would take GPU 0; "
                             "launch with torchrun (or set LOCAL_RANK per process)")
        device = resolve_device(f"cuda:{int(local)}")
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        # Generous timeout: the other ranks wait in their next all-reduce while rank 0 computes metrics.
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(hours=2))
    return Distributed(rank=rank, world=world, device=device), note


def check_batch_split(cfg: TrainConfig, world: int) -> None:
    """Every global minibatch of the run must split evenly over the ranks, into whole stddev groups."""
    for res in cfg.resolutions:
        batch = cfg.minibatch_at(res)
        if batch % world:
            raise UsageError(f"the {res}x{res} minibatch {batch} does not divide over {world} processes; "
                             f"pass --minibatch with multiples of {world}")
        local = batch // world
        group = min(cfg.mbstd_group_size, local)
        if local % group and cfg.mbstd_variant == "official":  # the gan-zoo variant takes any batch
            raise UsageError(f"the {res}x{res} minibatch per process ({local}) is not a multiple of the "
                             f"minibatch-stddev group size {group}; pass --minibatch with multiples of "
                             f"{group * world}")
