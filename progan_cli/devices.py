"""Where and how tensors compute: `--device` made a torch device (checked before any work), the CPU thread count,
and the TF32 policy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from progan_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA GPU when one is visible, else the CPU; 'cpu', 'cuda', 'cuda:N' as given.

    Anything torch cannot use here (a GPU that is not visible, an index past the last GPU, another device
    type) is a UsageError naming the option, raised before any work. torch is imported here, not at module
    level, so that commands can import this without slowing `progan --help`.
    """
    import torch

    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device; use {DEVICE_HELP}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"--device {name!r}: progan runs on {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UsageError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return device


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls and cuDNN convolutions inside the block only; the previous setting after it.

    Training with `--precision tf32` runs its steps inside `tf32(True)`; metrics run inside `tf32(False)`, so
    a number computed during training equals the one the command line computes (PyTorch's own default lets
    cuDNN use TF32, which would not). The flags are read when a kernel launches, so a backward pass must run
    inside the block too. On the CPU the flags exist and change nothing.
    """
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def use_threads(requested: int | None, reserved: int = 0) -> int:
    """Set torch's CPU threads: `requested` (`--threads`), else this process's share of the cores it may run
    on, less `reserved` cores that other busy processes of the same job take (DataLoader workers); at least 1.
    Returns the count, for the command to say.

    torch's default is every core, and OpenMP threads that wait for a core taken by a worker spin at each
    barrier: training at 32x32 on 2 shared cores ran 50 img/s with 2 threads beside 2 DataLoader workers and
    102 img/s with 1. Ranks that torchrun starts on one machine share its cores (LOCAL_WORLD_SIZE).
    """
    import torch

    if requested is not None and requested < 1:
        raise UsageError(f"--threads {requested} must be 1 or more")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    threads = requested or max(1, share - reserved)
    torch.set_num_threads(threads)
    return threads
