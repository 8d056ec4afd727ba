"""pytorch_GAN_zoo's PGAN checkpoints (facebookresearch/pytorch_GAN_zoo) as progan networks.

A checkpoint is a `torch.save` dict {'config': BaseConfig, 'netG', 'netD', 'avgG'} of state dicts (netG the
trained G, avgG its moving average). The zoo's equalized layers compute (W x + b) * c with c = sqrt(2 / fan_in)
for every layer (progan: W x * gain / sqrt(fan_in) + b, gain sqrt(2)/4 for G's dense, 1 for toRGB and D's
last dense): both scalings are folded into our weights, W' = W c sqrt(fan_in) / gain and b' = b c. Its
generator is progan's with one bias per channel and pixel in the 4x4 dense layer; its discriminator pools
after the activation and uses its own minibatch-stddev formula: `stem_bias="position"`, `d_fused=False`,
`mbstd_variant="gan-zoo"`. Its `alpha` counts the other way (0: only the newest scale).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from progan_cli.config import TrainConfig
from progan_cli.errors import CheckpointError
from progan_cli.formats.base import Networks, check_array, fit_widths
from progan_cli.networks.layers import SQRT2
from progan_cli.pretrained import ZOO_LICENCE

KIND = "pytorch_GAN_zoo PGAN checkpoint"
ZOO_KEYS = ("config", "netG", "netD")


def is_zoo_checkpoint(state: Any) -> bool:
    return isinstance(state, dict) and all(key in state for key in ZOO_KEYS)


def read_zoo(state: dict[str, Any], path: Path) -> Networks:
    """The networks of a loaded zoo checkpoint: netG as G, netD as D, avgG (or netG) as G_ema."""
    config = state["config"]
    settings = config if isinstance(config, dict) else getattr(config, "__dict__", {})

    def setting(key: str, default: Any = None) -> Any:
        return settings.get(key, default)

    depths = [setting("depthScale0")] + list(setting("depthOtherScales") or [])
    if not all(isinstance(d, int) and d > 0 for d in depths):
        raise CheckpointError(f"{path}: its config gives no layer depths (depthScale0, depthOtherScales)")
    if setting("categoryVectorDim", 0) or setting("attribKeysOrder"):
        raise CheckpointError(f"{path}: a conditional (AC-GAN) network; progan has no conditional generation "
                              "yet, so it loads unconditional networks only")
    if setting("dimOutput", 3) != 3:
        raise CheckpointError(f"{path}: G makes {setting('dimOutput')}-channel images; progan's networks make "
                              "RGB only")
    if setting("lossCriterion", "WGANGP") in ("MSE", "DCGAN"):
        raise CheckpointError(f"{path}: trained with the {setting('lossCriterion')} loss, whose G ends in tanh; "
                              "progan's G has a linear output (WGANGP and Logistic networks load)")
    if not setting("perChannelNormalization", True):
        raise CheckpointError(f"{path}: a G without pixel norm; progan's G normalizes every layer")
    equalized = bool(setting("equalizedlR", True))
    fmap_base, fmap_max = fit_widths(depths, str(path))
    target = 4 * 2 ** (len(depths) - 1)
    cfg = TrainConfig(data="", target=target, fmap_base=fmap_base, fmap_max=fmap_max,
                      latent_size=int(setting("latentVectorDim", 512)),
                      mbstd_group_size=4 if setting("miniBatchStdDev", False) else 1, mbstd_variant="gan-zoo",
                      stem_bias="position", d_fused=False)
    alpha = 1.0 - float(setting("alpha", 0.0))
    if not 0.0 <= alpha <= 1.0:
        raise CheckpointError(f"{path}: its alpha {setting('alpha')} lies outside [0, 1]")
    weights = {"G": _generator(state["netG"], len(depths), equalized, path),
               "D": _discriminator(state["netD"], len(depths), equalized, path)}
    weights["G_ema"] = _generator(state["avgG"], len(depths), equalized, path) if "avgG" in state else weights["G"]
    if len(depths) == 2 and alpha < 1.0:
        del weights["D"]  # the zoo's D does not blend while 8x8 fades in (its G does): not progan's D function
    return Networks(config=cfg, weights=weights, grown_to=target, alpha=alpha, cur_nimg=None, kind=KIND,
                    source=str(path), origin=f"pytorch_GAN_zoo PGAN, {Path(path).name}", licence=ZOO_LICENCE)


class _Folder:
    """Reads the zoo's `<name>.module.weight` / `.bias` pairs out of one state dict into ours, folding scales."""

    def __init__(self, zoo: Any, equalized: bool, what: str, path: Path) -> None:
        if not isinstance(zoo, dict):
            raise CheckpointError(f"{path}: its {what} is not a state dict")
        self.zoo = {k.removeprefix("module."): v for k, v in zoo.items()}
        self.equalized, self.what, self.path = equalized, what, path
        self.ours: dict[str, torch.Tensor] = {}

    def layer(self, zoo_name: str, ours: str, gain: float, ndim: int) -> torch.Tensor:
        w = check_array(f"{self.what} {zoo_name}.module.weight", self.zoo.get(f"{zoo_name}.module.weight"), ndim,
                        str(self.path))
        b = check_array(f"{self.what} {zoo_name}.module.bias", self.zoo.get(f"{zoo_name}.module.bias"), 1,
                        str(self.path))
        fan_in = math.prod(w.shape[1:])
        c = math.sqrt(2.0 / fan_in) if self.equalized else 1.0
        self.ours[f"{ours}.weight"] = w * (c * math.sqrt(fan_in) / gain)
        self.ours[f"{ours}.bias"] = b * c
        return self.ours[f"{ours}.bias"]


def _generator(zoo: Any, scales: int, equalized: bool, path: Path) -> dict[str, torch.Tensor]:
    f = _Folder(zoo, equalized, "G", path)
    bias = f.layer("formatLayer", "blocks.0.dense", SQRT2 / 4, 2)
    f.ours["blocks.0.bias"] = bias.reshape(-1, 4, 4)  # one per channel and pixel, in the reshape's order
    del f.ours["blocks.0.dense.bias"]
    f.layer("groupScale0.0", "blocks.0.conv", SQRT2, 4)
    for i in range(scales - 1):
        f.layer(f"scaleLayers.{i}.0", f"blocks.{i + 1}.conv0", SQRT2, 4)
        f.layer(f"scaleLayers.{i}.1", f"blocks.{i + 1}.conv1", SQRT2, 4)
    for k in range(scales):
        f.layer(f"toRGBLayers.{k}", f"to_rgb.{k}", 1.0, 4)
    return f.ours


def _discriminator(zoo: Any, scales: int, equalized: bool, path: Path) -> dict[str, torch.Tensor]:
    f = _Folder(zoo, equalized, "D", path)
    for k in range(scales):
        f.layer(f"fromRGBLayers.{k}", f"from_rgb.{k}", SQRT2, 4)
    for i in range(scales - 1):
        f.layer(f"scaleLayers.{i}.0", f"blocks.{i + 1}.conv0", SQRT2, 4)
        f.layer(f"scaleLayers.{i}.1", f"blocks.{i + 1}.conv1", SQRT2, 4)
    f.layer("groupScaleZero.0", "blocks.0.conv", SQRT2, 4)
    f.layer("groupScaleZero.1", "blocks.0.dense0", SQRT2, 2)
    decision = f.layer("decisionLayer", "blocks.0.dense1", 1.0, 2)
    if decision.numel() != 1:
        raise CheckpointError(f"{path}: D has {decision.numel()} outputs (an AC-GAN); progan's D has one score")
    return f.ours
