"""What every reader of a network file returns: our networks' config and state dicts, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from progan_cli.config import TrainConfig
from progan_cli.errors import CheckpointError

NET_NAMES = ("G", "D", "G_ema")


@dataclass
class Networks:
    """The networks of one file, in progan's layout: `weights[name]` loads into the G or D that `config`
    builds (name "G", "D" or "G_ema"; G_ema is what samples: official Gs, the zoo's avgG, our G_ema).

    `grown_to` and `alpha` say how far it had grown (as our schedule: the resolution its newest layers work at
    and their weight); `cur_nimg` the real images it was shown, when the file records them.
    """

    config: TrainConfig
    weights: dict[str, dict[str, torch.Tensor]]
    grown_to: int
    alpha: float
    cur_nimg: int | None
    kind: str  # what the file is, in words: "progan checkpoint", "NVIDIA official pickle", ...
    source: str  # the path it was read from
    origin: str  # where the weights came from (kept by exports and runs fine-tuned from them)
    licence: str | None  # their licence, when known

    @property
    def res(self) -> int:
        """The highest resolution it renders with its layers fully in (the previous one during a fade)."""
        return self.grown_to if self.alpha == 1.0 else self.grown_to // 2

    @property
    def resolutions(self) -> list[int]:
        """Every resolution it renders: 4 up to grown_to (the last mid-fade when alpha < 1)."""
        return [r for r in self.config.resolutions if r <= self.grown_to]

    def alpha_at(self, res: int) -> float:
        """Weight of the newest layers at `res`: below 1 only at a resolution still fading in."""
        return self.alpha if res == self.grown_to else 1.0

    @property
    def finished(self) -> bool:
        """Grown to the config's target resolution with the newest layers fully in."""
        return self.grown_to == self.config.target and self.alpha == 1.0

    def summary(self) -> dict[str, Any]:
        """What `progan info` prints of it: the file's kind, architecture, growth and provenance, as plain data."""
        from progan_cli.networks.layers import block_widths

        cfg = self.config
        return {"path": self.source, "kind": self.kind, "resolution": cfg.target, "grown_to": self.grown_to,
                "alpha": self.alpha, "renders": self.resolutions, "kimg": None if self.cur_nimg is None else
                self.cur_nimg / 1000, "networks": {name: sum(t.numel() for t in state.values())
                                                   for name, state in self.weights.items()},
                "latent_size": cfg.latent_size, "widths": block_widths(cfg.target, cfg.fmap_base, cfg.fmap_max),
                "fmap_base": cfg.fmap_base, "fmap_max": cfg.fmap_max, "mbstd_group_size": cfg.mbstd_group_size,
                "mbstd_variant": cfg.mbstd_variant, "stem_bias": cfg.stem_bias, "d_fused": cfg.d_fused,
                "origin": self.origin, "licence": self.licence}

    def build(self, name: str) -> nn.Module:
        """The network `name` with its weights, in eval mode without gradients; CheckpointError when the
        weights do not fit the architecture. The caller's RNG is left as it was."""
        from progan_cli.networks import build_discriminator, build_generator

        if name not in self.weights:
            held = ", ".join(self.weights)
            raise CheckpointError(f"{self.source}: holds no {name} (it holds {held})")
        with torch.random.fork_rng(devices=[]):  # building draws initial weights from the global RNG
            net = (build_discriminator if name == "D" else build_generator)(self.config)
        try:
            net.load_state_dict(self.weights[name])
        except RuntimeError as exc:
            raise CheckpointError(f"{self.source}: its {name} weights do not make the network its config "
                                  f"describes ({str(exc).splitlines()[-1].strip()})") from None
        return net.requires_grad_(False).eval()


def fit_widths(widths: list[int], source: str) -> tuple[int, int]:
    """(fmap_base, fmap_max) whose nf(stage) = min(fmap_base // 2^stage, fmap_max) gives `widths` for the
    blocks at 4, 8, ... (block k uses stage k + 1); CheckpointError when no pair does.

    Widths that never fall below the widest leave fmap_base free: the official 8192, or the smallest that
    keeps every block at the cap.
    """
    top = max(widths)
    below = next((k for k, w in enumerate(widths) if w < top), None)
    base = widths[below] * 2 ** (below + 1) if below is not None else max(8192, top * 2 ** len(widths))
    if [min(base // 2 ** (k + 1), top) for k in range(len(widths))] != list(widths):
        raise CheckpointError(f"{source}: block widths {widths} do not follow ProGAN's nf(stage) = "
                              "min(fmap_base / 2^stage, fmap_max), which progan's networks are built from")
    return base, top


def check_array(name: str, value: Any, ndim: int, source: str) -> torch.Tensor:
    """A float tensor of `ndim` dimensions from a foreign file's array; CheckpointError otherwise."""
    import numpy as np

    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        value = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim != ndim:
        shape = getattr(value, "shape", None)
        raise CheckpointError(f"{source}: {name} is not a {ndim}-d float array (found {type(value).__name__}"
                              f"{f' {tuple(shape)}' if shape is not None else ''})")
    return value.float().contiguous()
