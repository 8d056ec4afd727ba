"""NVIDIA's official ProGAN pickles (tkarras/progressive_growing_of_gans) as progan networks, without TensorFlow.

A pickle holds the tuple (G, D, Gs) of `tfutil.Network` objects; each pickles as the dict its
`__getstate__` returns, whose `variables` are (name, float32 array) pairs in TensorFlow layouts. The
architecture (resolution, widths, latent size, channels, labels) is read from the arrays' shapes, never from
`static_kwargs` or the name; `build_module_src`, the source that the official loader runs through Python's
exec, is ignored.

Layouts (official networks.py): dense [in, out]; conv [kh, kw, in, out], a cross-correlation like torch's;
the fused up-convolution `Conv0_up` [k, k, out, in] is a transposed convolution, which equals a plain
convolution of the nearest-upscaled input with the kernel flipped in both spatial axes. Non-fused G
(`Conv0` after upscale2d) is the same function as fused G; non-fused D (`Conv1`, then lrelu, then
downscale2d) is not the same as fused D (`Conv1_down`), and maps to `TrainConfig.d_fused = False`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from progan_cli.config import TrainConfig
from progan_cli.errors import CheckpointError
from progan_cli.formats.base import Networks, check_array, fit_widths
from progan_cli.pretrained import NVIDIA_LICENCE
from progan_cli.schedule import level_of_detail
from progan_cli.unpickle import NVIDIA_GLOBALS, NetworkStub, load_pickle

KIND = "NVIDIA official ProGAN pickle"
# static_kwargs that change the function without changing any shape: progan's networks are the defaults.
_FIXED = {"use_wscale": True, "use_pixelnorm": True, "normalize_latents": True, "use_leakyrelu": True,
          "pixelnorm_epsilon": 1e-8}


def read_official(path: Path) -> Networks:
    """The networks of an official pickle: G, D and Gs (as G_ema) in progan's layout."""
    nets = _network_states(load_pickle(path, NVIDIA_GLOBALS, "official ProGAN pickle"), path)
    tf_vars = {name: _variables(state, name, path) for name, state in nets.items()}
    for name, state in nets.items():
        _check_fixed(state.get("static_kwargs") or {}, name, path)
    _refuse_labels(tf_vars.get("D"), nets, path)
    weights, arch = {}, {}
    for name, variables in tf_vars.items():
        if name == "D":
            weights["D"], d_arch = _discriminator(variables, nets["D"].get("static_kwargs") or {}, path)
            arch.update(d_arch)
        else:
            weights[name], g_arch = _generator(variables, path)
            arch.update(g_arch)
    widths = arch.pop("widths")
    fmap_base, fmap_max = fit_widths(widths, str(path))
    cfg = TrainConfig(data="", fmap_base=fmap_base, fmap_max=fmap_max, **arch)
    lod = float(np.asarray(tf_vars["G_ema"].get("lod", 0.0)))
    if not 0.0 <= lod <= cfg.target.bit_length() - 3:
        raise CheckpointError(f"{path}: Gs has lod {lod}, outside 0..{cfg.target.bit_length() - 3}")
    grown_to, alpha = level_of_detail(cfg.target, lod)
    return Networks(config=cfg, weights=weights, grown_to=grown_to, alpha=alpha, cur_nimg=None, kind=KIND,
                    source=str(path), origin=f"NVIDIA's official ProGAN, {Path(path).name}", licence=NVIDIA_LICENCE)


def _network_states(obj: Any, path: Path) -> dict[str, dict[str, Any]]:
    """{"G": state, "D": state, "G_ema": state} of the official (G, D, Gs) tuple, or {"G_ema": state} of a
    lone generator."""
    items = list(obj) if isinstance(obj, (tuple, list)) else [obj]
    if not items or not all(isinstance(item, NetworkStub) and isinstance(getattr(item, "state", None), dict)
                            for item in items):
        raise CheckpointError(f"{path}: a pickle, but not of official ProGAN networks (tfutil.Network)")
    states = [item.state for item in items]
    for state in states:
        if state.get("version") != 2:
            raise CheckpointError(f"{path}: a tfutil.Network of version {state.get('version')!r}; progan reads "
                                  "version 2 (the TensorFlow code's; Theano-era pickles are not supported)")
    if len(states) == 3:
        return {"G": states[0], "D": states[1], "G_ema": states[2]}
    if len(states) == 1:
        return {"G_ema": states[0]}
    raise CheckpointError(f"{path}: holds {len(states)} networks; official pickles hold (G, D, Gs)")


def _variables(state: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    pairs = state.get("variables")
    if not isinstance(pairs, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
        raise CheckpointError(f"{path}: network {name} has no (name, array) variables")
    variables = dict(pairs)
    is_d = "4x4/Dense0/weight" in variables
    if is_d != (name == "D") or (not is_d and "4x4/Dense/weight" not in variables):
        raise CheckpointError(f"{path}: the networks are not in the official (G, D, Gs) order or are not "
                              "ProGAN's G_paper / D_paper")
    return variables


def _refuse_labels(d_vars: dict[str, Any] | None, nets: dict[str, dict[str, Any]], path: Path) -> None:
    """Labels are in D's output width (1 + label_size); a lone G says it only in its static_kwargs (its dense
    layer takes latents and labels together)."""
    if d_vars is not None:
        labels = check_array("D 4x4/Dense1/weight", d_vars.get("4x4/Dense1/weight"), 2, str(path)).shape[1] - 1
    else:
        labels = int((nets["G_ema"].get("static_kwargs") or {}).get("label_size", 0))
    if labels:
        raise CheckpointError(f"{path}: a conditional network ({labels} labels); progan has no conditional "
                              "generation yet, so it loads unconditional networks only")


def _check_fixed(static_kwargs: dict[str, Any], name: str, path: Path) -> None:
    for key, value in _FIXED.items():
        if key in static_kwargs and static_kwargs[key] != value:
            raise CheckpointError(f"{path}: network {name} was built with {key}={static_kwargs[key]!r}; progan's "
                                  f"networks have {key}={value!r}")


def _conv(w: torch.Tensor) -> torch.Tensor:
    """[kh, kw, in, out] -> (out, in, kh, kw)."""
    return w.permute(3, 2, 0, 1).contiguous()


def _up_conv(w: torch.Tensor) -> torch.Tensor:
    """Fused Conv0_up [k, k, out, in] (a transposed convolution's kernel) -> the (out, in, k, k) kernel of the
    same map as a convolution after nearest upscaling: transposed, and flipped in both spatial axes."""
    return w.permute(2, 3, 0, 1).flip(2, 3).contiguous()


def _dense(w: torch.Tensor) -> torch.Tensor:
    """[in, out] -> (out, in)."""
    return w.T.contiguous()


def _levels(variables: dict[str, Any]) -> list[int]:
    """Resolutions 4, 8, ... that have blocks (each block above 4x4 has a Conv0, or G's fused Conv0_up)."""
    res = [4]
    while any(f"{2 * res[-1]}x{2 * res[-1]}/{conv}/weight" in variables for conv in ("Conv0", "Conv0_up")):
        res.append(2 * res[-1])
    return res


class _Mapper:
    """One network's TF variables into progan's state dict, checked: `layer` moves `scope/weight` (laid out
    anew) and `scope/bias` to `ours.weight` and `ours.bias`."""

    def __init__(self, variables: dict[str, Any], who: str, path: Path) -> None:
        self.v, self.who, self.path = variables, who, path
        self.levels = _levels(variables)
        self.state: dict[str, torch.Tensor] = {}

    def layer(self, scope: str, ours: str, layout=_conv) -> None:
        weight = self.v.get(f"{scope}/weight")
        ndim = 2 if layout is _dense else 4
        self.state[f"{ours}.weight"] = layout(check_array(f"{self.who} {scope}/weight", weight, ndim, str(self.path)))
        self.state[f"{ours}.bias"] = check_array(f"{self.who} {scope}/bias", self.v.get(f"{scope}/bias"), 1,
                                                 str(self.path))

    def fused(self, conv: str) -> bool:
        """Whether the blocks above 4x4 use the fused `conv` (all or none)."""
        found = {f"{res}x{res}/{conv}/weight" in self.v for res in self.levels[1:]}
        if len(found) > 1:
            raise CheckpointError(f"{self.path}: {self.who} mixes fused and non-fused blocks")
        return found != {False}  # a 4x4-only network counts as fused, the official default

    def rgb_layers(self, tf_name: str, ours: str) -> None:
        """ToRGB_lod{n} / FromRGB_lod{n}: lod n belongs to the block at 4 * 2^(levels - 1 - n)."""
        for k in range(len(self.levels)):
            self.layer(f"{tf_name}_lod{len(self.levels) - 1 - k}", f"{ours}.{k}")


def _generator(v: dict[str, Any], path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    m = _Mapper(v, "G", path)
    fused = m.fused("Conv0_up")
    m.layer("4x4/Dense", "blocks.0.dense", _dense)
    m.state["blocks.0.bias"] = m.state.pop("blocks.0.dense.bias")  # one per channel, after the reshape
    m.layer("4x4/Conv", "blocks.0.conv")
    conv0, layout = ("Conv0_up", _up_conv) if fused else ("Conv0", _conv)
    for k, res in enumerate(m.levels[1:], start=1):
        m.layer(f"{res}x{res}/{conv0}", f"blocks.{k}.conv0", layout)
        m.layer(f"{res}x{res}/Conv1", f"blocks.{k}.conv1")
    m.rgb_layers("ToRGB", "to_rgb")
    channels = m.state["to_rgb.0.weight"].shape[0]
    if channels != 3:
        raise CheckpointError(f"{path}: G makes {channels}-channel images; progan's networks make RGB only")
    widths = [m.state["blocks.0.conv.weight"].shape[0]] + [m.state[f"blocks.{k}.conv1.weight"].shape[0]
                                                          for k in range(1, len(m.levels))]
    latent_size = m.state["blocks.0.dense.weight"].shape[1]  # no labels: refused before
    return m.state, {"target": m.levels[-1], "latent_size": latent_size, "widths": widths}


def _discriminator(v: dict[str, Any], static_kwargs: dict[str, Any],
                   path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    m = _Mapper(v, "D", path)
    fused = m.fused("Conv1_down")
    m.rgb_layers("FromRGB", "from_rgb")
    for k, res in enumerate(m.levels[1:], start=1):
        m.layer(f"{res}x{res}/Conv0", f"blocks.{k}.conv0")
        m.layer(f"{res}x{res}/{'Conv1_down' if fused else 'Conv1'}", f"blocks.{k}.conv1")
    m.layer("4x4/Conv", "blocks.0.conv")
    m.layer("4x4/Dense0", "blocks.0.dense0", _dense)
    m.layer("4x4/Dense1", "blocks.0.dense1", _dense)
    head = m.state["blocks.0.conv.weight"]
    has_mbstd = head.shape[1] == head.shape[0] + 1
    # The group size changes no shape: the file's own setting (16 in the released networks, converted from
    # the Theano code), else the official default.
    group = int(static_kwargs.get("mbstd_group_size", 4)) if has_mbstd else 1
    if has_mbstd and group < 2:
        raise CheckpointError(f"{path}: D has a minibatch-stddev input but mbstd_group_size {group}")
    return m.state, {"mbstd_group_size": group, "d_fused": fused}
