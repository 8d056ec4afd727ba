"""NVIDIA's official ProGAN pickles (tkarras/progressive_growing_of_gans) as progan networks, without TensorFlow.

A pickle holds the tuple (G, D, Gs) of `tfutil.Network` objects; each pickles as the dict its
`__getstate__` returns, whose `variables` are (name, float32 array) pairs in TensorFlow layouts. The
architecture (resolution, widths, latent size, channels, labels) is read from the arrays' shapes, never from
`static_kwargs` or the name; `build_module_src`, the source the official loader exec()s, is ignored.

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
    kinds = {name: _variables(state, name, path) for name, state in nets.items()}
    label_size = _label_size(kinds.get("D"), nets, path)
    weights, arch = {}, {}
    for name, variables in kinds.items():
        if name == "D":
            weights["D"], d_arch = _discriminator(variables, nets["D"].get("static_kwargs") or {}, path)
            arch.update(d_arch)
        else:
            weights[name], g_arch = _generator(variables, label_size, path)
            arch.update(g_arch)
    for name, state in nets.items():
        _check_fixed(state.get("static_kwargs") or {}, name, path)
    widths = arch.pop("widths")
    fmap_base, fmap_max = fit_widths(widths, str(path))
    cfg = TrainConfig(data="", fmap_base=fmap_base, fmap_max=fmap_max, **arch)
    lod = float(np.asarray(kinds["G_ema"].get("lod", 0.0)))
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


def _label_size(d_vars: dict[str, Any] | None, nets: dict[str, dict[str, Any]], path: Path) -> int:
    """Labels from D's output width (1 + label_size); a lone G says it only in its static_kwargs."""
    if d_vars is not None:
        labels = check_array("D 4x4/Dense1/weight", d_vars.get("4x4/Dense1/weight"), 2, str(path)).shape[1] - 1
    else:
        labels = int((nets["G_ema"].get("static_kwargs") or {}).get("label_size", 0))
    if labels:
        raise CheckpointError(f"{path}: a conditional network ({labels} labels); progan has no conditional "
                              "generation yet, so it loads unconditional networks only")
    return labels


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


def _levels(variables: dict[str, Any]) -> list[int]:
    """Resolutions 4, 8, ... that have blocks (each block above 4x4 has a Conv0, or G's fused Conv0_up)."""
    res = [4]
    while any(f"{2 * res[-1]}x{2 * res[-1]}/{conv}/weight" in variables for conv in ("Conv0", "Conv0_up")):
        res.append(2 * res[-1])
    return res


def _generator(v: dict[str, Any], label_size: int, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    src = str(path)

    def get(name: str, ndim: int) -> torch.Tensor:
        return check_array(f"G {name}", v.get(name), ndim, src)

    levels = _levels(v)
    dense = get("4x4/Dense/weight", 2)
    state = {"blocks.0.dense.weight": dense.T.contiguous(), "blocks.0.bias": get("4x4/Dense/bias", 1),
             "blocks.0.conv.weight": _conv(get("4x4/Conv/weight", 4)), "blocks.0.conv.bias": get("4x4/Conv/bias", 1)}
    widths = [state["blocks.0.conv.weight"].shape[0]]
    fused = None
    for k, res in enumerate(levels[1:], start=1):
        scope = f"{res}x{res}"
        block_fused = f"{scope}/Conv0_up/weight" in v
        if fused is not None and block_fused != fused:
            raise CheckpointError(f"{path}: G mixes fused and non-fused blocks")
        fused = block_fused
        conv0 = get(f"{scope}/Conv0_up/weight", 4) if fused else get(f"{scope}/Conv0/weight", 4)
        state[f"blocks.{k}.conv0.weight"] = _up_conv(conv0) if fused else _conv(conv0)
        state[f"blocks.{k}.conv0.bias"] = get(f"{scope}/{'Conv0_up' if fused else 'Conv0'}/bias", 1)
        state[f"blocks.{k}.conv1.weight"] = _conv(get(f"{scope}/Conv1/weight", 4))
        state[f"blocks.{k}.conv1.bias"] = get(f"{scope}/Conv1/bias", 1)
        widths.append(state[f"blocks.{k}.conv1.weight"].shape[0])
    for k in range(len(levels)):
        lod = len(levels) - 1 - k
        state[f"to_rgb.{k}.weight"] = _conv(get(f"ToRGB_lod{lod}/weight", 4))
        state[f"to_rgb.{k}.bias"] = get(f"ToRGB_lod{lod}/bias", 1)
    channels = state["to_rgb.0.weight"].shape[0]
    if channels != 3:
        raise CheckpointError(f"{path}: G makes {channels}-channel images; progan's networks make RGB only")
    return state, {"target": levels[-1], "latent_size": dense.shape[0] - label_size, "widths": widths}


def _discriminator(v: dict[str, Any], static_kwargs: dict[str, Any],
                   path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    src = str(path)

    def get(name: str, ndim: int) -> torch.Tensor:
        return check_array(f"D {name}", v.get(name), ndim, src)

    levels = _levels(v)
    state = {"blocks.0.conv.weight": _conv(get("4x4/Conv/weight", 4)), "blocks.0.conv.bias": get("4x4/Conv/bias", 1),
             "blocks.0.dense0.weight": get("4x4/Dense0/weight", 2).T.contiguous(),
             "blocks.0.dense0.bias": get("4x4/Dense0/bias", 1),
             "blocks.0.dense1.weight": get("4x4/Dense1/weight", 2).T.contiguous(),
             "blocks.0.dense1.bias": get("4x4/Dense1/bias", 1)}
    fused = None
    for k, res in enumerate(levels[1:], start=1):
        scope = f"{res}x{res}"
        block_fused = f"{scope}/Conv1_down/weight" in v
        if fused is not None and block_fused != fused:
            raise CheckpointError(f"{path}: D mixes fused and non-fused blocks")
        fused = block_fused
        conv1 = "Conv1_down" if fused else "Conv1"
        state[f"blocks.{k}.conv0.weight"] = _conv(get(f"{scope}/Conv0/weight", 4))
        state[f"blocks.{k}.conv0.bias"] = get(f"{scope}/Conv0/bias", 1)
        state[f"blocks.{k}.conv1.weight"] = _conv(get(f"{scope}/{conv1}/weight", 4))
        state[f"blocks.{k}.conv1.bias"] = get(f"{scope}/{conv1}/bias", 1)
    for k in range(len(levels)):
        lod = len(levels) - 1 - k
        state[f"from_rgb.{k}.weight"] = _conv(get(f"FromRGB_lod{lod}/weight", 4))
        state[f"from_rgb.{k}.bias"] = get(f"FromRGB_lod{lod}/bias", 1)
    head = state["blocks.0.conv.weight"]
    has_mbstd = head.shape[1] == head.shape[0] + 1
    # The group size changes no shape: the file's own setting (16 in the released networks, converted from
    # the Theano code), else the official default.
    group = int(static_kwargs.get("mbstd_group_size", 4)) if has_mbstd else 1
    if has_mbstd and group < 2:
        raise CheckpointError(f"{path}: D has a minibatch-stddev input but mbstd_group_size {group}")
    return state, {"mbstd_group_size": group, "d_fused": fused is not False}
