"""progan's own network files: a run's checkpoints, and exports (a generator alone, as safetensors: tensors and
JSON metadata, loaded without unpickling)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from progan_cli.config import TrainConfig
from progan_cli.errors import CheckpointError, ProganError
from progan_cli.files import atomic_write
from progan_cli.formats.base import NET_NAMES, Networks
from progan_cli.schedule import schedule_at

CHECKPOINT_KIND = "progan checkpoint"
EXPORT_KIND = "progan export"
EXPORT_FORMAT = "progan-generator"
EXPORT_VERSION = 2  # 2: origin and licence recorded, cur_nimg optional (unknown for published networks)
EXPORT_SUFFIX = ".safetensors"


def from_checkpoint(ckpt: dict[str, Any]) -> Networks:
    """The networks of a loaded checkpoint (checkpoints.load_checkpoint), grown as its schedule says."""
    path = ckpt["path"]
    cfg = _config(ckpt["config"], path)
    cur_nimg = int(ckpt["progress"]["cur_nimg"])
    sched = schedule_at(cur_nimg, cfg)
    provenance = ckpt.get("provenance") or {}
    origin = provenance.get("origin") or f"progan run {Path(path).parent.parent.name}"
    return Networks(config=cfg, weights={name: ckpt[name] for name in NET_NAMES}, grown_to=sched.res,
                    alpha=sched.alpha, cur_nimg=cur_nimg, kind=CHECKPOINT_KIND, source=path, origin=origin,
                    licence=provenance.get("licence"))


def provenance_after(init: Networks, run_dir: Path) -> dict[str, str]:
    """What the checkpoints of a run fine-tuned from `init` record about their weights: still derived from
    `init`'s, under its licence."""
    recorded = {"origin": f"progan run {Path(run_dir).name}, fine-tuned from {init.origin}"}
    if init.licence:
        recorded["licence"] = init.licence
    return recorded


def read_export(path: Path) -> Networks:
    """The generator of an export (format 1 or 2); CheckpointError for anything else."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error kinds for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc.__class__.__name__})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: a safetensors file, but not a generator exported by `progan export`")
    if int(meta.get("format_version", 0)) > EXPORT_VERSION:
        raise CheckpointError(f"{path}: export format {meta['format_version']} is newer than this progan reads "
                              f"({EXPORT_VERSION}); upgrade progan")
    missing = [key for key in ("config", "weights", "grown_to", "alpha") if key not in meta]
    if missing:
        raise CheckpointError(f"{path}: the export lacks {', '.join(missing)} in its metadata")
    cfg = _config(json.loads(meta["config"]), str(path))
    cur_nimg = int(meta["cur_nimg"]) if meta.get("cur_nimg") else None
    return Networks(config=cfg, weights={meta["weights"]: state}, grown_to=int(meta["grown_to"]),
                    alpha=float(meta["alpha"]), cur_nimg=cur_nimg, kind=EXPORT_KIND, source=str(path),
                    origin=meta.get("origin") or f"progan run, exported from {meta.get('source', 'a checkpoint')}",
                    licence=meta.get("licence") or None)


def write_export(path: Path, state: dict[str, torch.Tensor], weights: str, about: Networks) -> Path:
    """One safetensors file of a generator's weights (`weights`: "G_ema" or "G") and what rebuilds it, from
    `about` (config, how far it grew, the images it saw) with where the weights came from and their licence."""
    from safetensors.torch import save

    from progan_cli import __version__

    meta = {"format": EXPORT_FORMAT, "format_version": str(EXPORT_VERSION),
            "config": json.dumps(about.config.to_dict()), "resolution": str(about.res),
            "grown_to": str(about.grown_to), "alpha": f"{about.alpha:.17g}", "weights": weights,
            "source": Path(about.source).name, "origin": about.origin, "licence": about.licence or "",
            "progan_version": __version__}
    if about.cur_nimg is not None:
        meta.update(cur_nimg=str(about.cur_nimg), kimg=f"{about.cur_nimg / 1000:g}")
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    with atomic_write(path) as tmp:
        tmp.write_bytes(save(tensors, metadata=meta))  # (save_file creates the file private to its owner)
    return Path(path)


def _config(d: Any, source: str) -> TrainConfig:
    try:
        return TrainConfig.from_dict(d)
    except (ProganError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{source}: its config does not make a generator ({str(exc).splitlines()[0]})") from None
