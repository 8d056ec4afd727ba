"""Every network file progan reads, as one `Networks` in progan's layout: a run folder or checkpoint, an export,
NVIDIA's official ProGAN pickles and pytorch_GAN_zoo's PGAN checkpoints.

The kind is read from the bytes, not the name: a zip or PyTorch's legacy header is a `torch.save` file (ours or
the zoo's, told apart by their keys), any other pickle an official one. Nothing runs code from a file: torch
files load with weights_only, pickles through the allow-list in progan_cli/unpickle.py.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from progan_cli.checkpoints import check_checkpoint, load_checkpoint
from progan_cli.errors import CheckpointError
from progan_cli.formats.base import Networks
from progan_cli.formats.gan_zoo import is_zoo_checkpoint, read_zoo
from progan_cli.formats.official import read_official
from progan_cli.formats.progan import EXPORT_SUFFIX, from_checkpoint, read_export
from progan_cli.pretrained import locate
from progan_cli.unpickle import load_torch

__all__ = ["Networks", "load_networks", "EXPORT_SUFFIX"]

# torch.save's legacy format starts with its magic number pickled at protocol 2 (a LONG1 of 10 bytes).
_TORCH_LEGACY = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")
_PICKLE = tuple(bytes([0x80, protocol]) for protocol in (2, 3, 4, 5))


def load_networks(path: Path | str) -> Networks:
    """The networks of a run folder (its newest checkpoint), a checkpoint, an export, an official pickle or a
    zoo checkpoint (or a published network's catalogue name, once it is in the cache); CheckpointError with one
    line for anything else."""
    path = locate(path)
    if path.is_dir() or not path.exists():
        return from_checkpoint(load_checkpoint(path))  # a run folder, or the "no such file" line
    if path.suffix.lower() == EXPORT_SUFFIX:
        return read_export(path)
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY))
    if head.startswith(_PICKLE) and not head.startswith(_TORCH_LEGACY) and not zipfile.is_zipfile(path):
        return read_official(path)
    state = load_torch(path, "checkpoint")
    if is_zoo_checkpoint(state):
        return read_zoo(state, path)
    if isinstance(state, dict) and "format" not in state:
        raise CheckpointError(f"{path}: not a progan checkpoint (nor a pytorch_GAN_zoo PGAN checkpoint)")
    return from_checkpoint(check_checkpoint(state, path))
