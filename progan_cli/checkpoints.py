"""Checkpoints: everything needed to resume a run exactly, written atomically, loaded without unpickling code.

A checkpoint is one `torch.save` dict of tensors and plain values (so `torch.load(weights_only=True)` reads
it): the format tag, the run's config, the state dicts of G, D, G_ema and both Adams, the training progress
(images shown, tick, the lod of the last schedule update, the running sums of the current tick) and every
RNG state (torch CPU and CUDA). The data order needs no state of its own: it is a pure function of the seed
and the number of images shown (see data/stream.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from progan_cli.errors import CheckpointError
from progan_cli.files import atomic_write
from progan_cli.unpickle import load_torch

FORMAT = "progan-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
REQUIRED = ("config", "G", "D", "G_ema", "opt_G", "opt_D", "progress", "tick_sums", "rng")
_NAME = re.compile(r"^ckpt-\d{6}(\.\d{3})?\.pt$")


def kimg_tag(cur_nimg: int) -> str:
    """Run files are named by kimg: 000600, or 000600.512 off a whole kimg."""
    return f"{cur_nimg // 1000:06d}" if cur_nimg % 1000 == 0 else f"{cur_nimg / 1000:010.3f}"


def checkpoint_name(cur_nimg: int) -> str:
    return f"ckpt-{kimg_tag(cur_nimg)}.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write `state` to run_dir/checkpoints atomically and delete all but the newest `keep` checkpoints."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(state["progress"]["cur_nimg"])
    with atomic_write(path) as tmp:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, tmp)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink()
    return path


def checkpoint_kimg(path: Path) -> float | None:
    """The kimg a checkpoint's name records (ckpt-000600.512.pt -> 600.512); None for other names."""
    name = Path(path).name
    return float(name[5:-3]) if _NAME.match(name) else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    # By kimg, not by name: "ckpt-000600.512.pt" sorts before "ckpt-000600.pt" as text.
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=checkpoint_kimg)


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file as given, or the newest checkpoint of a run folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file")
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path} has no checkpoints in {CHECKPOINT_DIR}/ (is it a `progan train` run folder?)")
    return found[-1]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (file or run folder) onto the CPU with weights_only=True, checking its format."""
    path = find_checkpoint(path)
    return check_checkpoint(load_torch(path, "checkpoint"), path)


def check_checkpoint(state: Any, path: Path) -> dict[str, Any]:
    """`state` as loaded from `path`, checked to be a progan checkpoint this version reads; its "path" set."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a progan checkpoint")
    version = state.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: a damaged progan checkpoint (no format version)")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is newer than this progan reads "
                              f"({FORMAT_VERSION}); upgrade progan")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{path}: a damaged progan checkpoint (no {missing[0]!r})")
    state["path"] = str(path)
    return state
