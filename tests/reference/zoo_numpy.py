"""Plain numpy forward passes of pytorch_GAN_zoo's PGAN networks (`GNet`, `DNet` of
facebookresearch/pytorch_GAN_zoo, `models/networks/progressive_conv_net.py`), from a checkpoint's state dict
and config, written from the zoo's semantics (read, not copied).

Why it exists: the zoo is *not* the official network with other names. Its equalized layers scale the bias
too ((W x + b) * sqrt(2 / fan_in)), its dense and toRGB layers use gain sqrt(2), the format layer has one bias
per channel *and* position, its minibatch stddev groups contiguous samples with the unbiased variance, and
its alpha runs the other way (alpha 0 = only the newest scale). An importer that reuses the official mapping
gets all of that subtly wrong; this module is the function the zoo computes, for tests to compare against.
Nothing here imports progan_cli.
"""

from __future__ import annotations

import math

import numpy as np

from .official_numpy import conv2d, downscale2d, pixel_norm, upscale2d


def _cfg(config, key: str, default=None):
    """A config field, from the zoo's BaseConfig object (attributes) or a plain dict."""
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _np(a) -> np.ndarray:
    """A state-dict value (torch tensor or array) as float64 numpy."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


class _Layers:
    """The zoo's ConstrainedLayer: module(x) (with its bias), then times sqrt(2 / fan_in) when equalized,
    fan_in = prod(weight.shape[1:]) (in * kh * kw for a conv, in for a linear layer)."""

    def __init__(self, state, equalized: bool):
        self.s = {str(k): _np(v) for k, v in state.items()}
        self.equalized = bool(equalized)

    def _get(self, key: str) -> np.ndarray:
        if key not in self.s:
            raise KeyError(f"{key!r} is missing from the state dict (have {sorted(self.s)})")
        return self.s[key]

    def _scale(self, w: np.ndarray) -> float:
        return math.sqrt(2.0 / int(np.prod(w.shape[1:]))) if self.equalized else 1.0

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        w, b = self._get(name + ".module.weight"), self._get(name + ".module.bias")
        return (x @ w.T + b) * self._scale(w)

    def conv(self, name: str, x: np.ndarray) -> np.ndarray:
        """torch Conv2d (cross-correlation) with padding (k - 1) // 2: 1 for the 3x3 convs, 0 for 1x1."""
        w, b = self._get(name + ".module.weight"), self._get(name + ".module.bias")
        # torch (out, in, kh, kw) -> [kh, kw, in, out]; for odd k and stride 1 TF 'SAME' is padding k // 2.
        y = conv2d(x, w.transpose(2, 3, 1, 0)) + b[None, :, None, None]
        return y * self._scale(w)


def _lrelu(x: np.ndarray, leak: float) -> np.ndarray:
    """torch.nn.LeakyReLU(leak)."""
    return np.where(x >= 0, x, x * leak)


def zoo_minibatch_stddev(x: np.ndarray, sub_group_size: int = 4) -> np.ndarray:
    """The zoo's miniBatchStdDev (differs from the official layer on purpose): g = min(N, 4), g = N when N % g;
    *contiguous* groups (x.view(-1, g, C, H, W): samples 0..g-1 form group 0), *unbiased* variance,
    sqrt(var + 1e-8), mean over C, H, W, appended as the last channel; all zeros when g == 1."""
    n, c, h, w = x.shape
    g = min(n, sub_group_size)
    if n % g:
        g = n
    if g > 1:
        y = x.reshape(n // g, g, c, h, w)
        y = np.sqrt(y.var(axis=1, ddof=1) + 1e-8).reshape(n // g, -1).mean(axis=1)  # one per group
        y = np.repeat(y, g)  # sample i -> group i // g
    else:
        y = np.zeros(n)
    return np.concatenate([x, np.broadcast_to(y[:, None, None, None], (n, 1, h, w))], axis=1)


def _alpha(config) -> float:
    """GNet/DNet get setNewAlpha(config.alpha) only when there are scales above 4x4; otherwise alpha stays 0."""
    if not list(_cfg(config, "depthOtherScales", []) or []):
        return 0.0
    alpha = float(_cfg(config, "alpha", 0.0) or 0.0)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0,1]")
    return alpha


def zoo_G(state, config, z: np.ndarray) -> np.ndarray:
    """GNet.forward -> [N, dimOutput, R, R]: PN(z) -> formatLayer (bias per channel and position) -> lrelu ->
    view [N, depth0, 4, 4] -> PN -> groupScale0 conv, lrelu, PN; per scale: nearest x2, two convs each
    followed by lrelu and PN; toRGB of the last scale, blended as alpha * up(toRGB_prev) + (1 - alpha) * it."""
    layers = _Layers(state, _cfg(config, "equalizedlR", True))
    leak = float(_cfg(config, "leakyReluLeak", 0.2))
    normalize = bool(_cfg(config, "perChannelNormalization", True))
    if not normalize:
        # GNet.forward calls self.normalizationLayer(x) unconditionally after the format layer, so a GNet
        # built with normalization=False fails there: there is no function to be faithful to.
        raise NotImplementedError("the zoo's GNet cannot run with perChannelNormalization=False")
    n_scales = len(list(_cfg(config, "depthOtherScales", []) or []))
    alpha = _alpha(config)

    x = np.asarray(z, dtype=np.float64)
    x = pixel_norm(x).reshape(x.shape[0], -1)
    x = _lrelu(layers.linear("formatLayer", x), leak)
    x = pixel_norm(x.reshape(x.shape[0], -1, 4, 4))
    x = pixel_norm(_lrelu(layers.conv("groupScale0.0", x), leak))
    y = None
    if alpha > 0 and n_scales == 1:
        y = upscale2d(layers.conv("toRGBLayers.0", x))
    for i in range(n_scales):
        x = upscale2d(x)
        for j in (0, 1):
            x = pixel_norm(_lrelu(layers.conv(f"scaleLayers.{i}.{j}", x), leak))
        if alpha > 0 and i == n_scales - 2:
            y = upscale2d(layers.conv(f"toRGBLayers.{i + 1}", x))
    x = layers.conv(f"toRGBLayers.{n_scales}", x)
    if alpha > 0:
        x = alpha * y + (1.0 - alpha) * x
    if _cfg(config, "lossCriterion", "WGANGP") in ("MSE", "DCGAN"):  # their generationActivation is tanh
        x = np.tanh(x)
    return x


def zoo_D(state, config, images: np.ndarray) -> np.ndarray:
    """DNet.forward -> [N, sizeDecisionLayer]: lrelu(fromRGB); per scale, newest first: two convs each with
    lrelu, then 2x2 average pool (after the activation); alpha blend with lrelu(fromRGB_prev(pool(images)))
    after the first pooled scale; miniBatchStdDev if configured; 4x4 conv, lrelu, flatten (NCHW), linear,
    lrelu, decision layer.

    Quirk kept: DNet blends only when it has more than one scale above 4x4 (mergeLayer = alpha > 0 and
    len(scaleLayers) > 1), so an 8x8 DNet ignores alpha while its GNet does not.
    """
    layers = _Layers(state, _cfg(config, "equalizedlR", True))
    leak = float(_cfg(config, "leakyReluLeak", 0.2))
    n_scales = len(list(_cfg(config, "depthOtherScales", []) or []))
    alpha = _alpha(config)
    x = np.asarray(images, dtype=np.float64)
    if x.shape[2] != 4 * 2 ** n_scales:
        raise ValueError(f"this DNet takes {4 * 2 ** n_scales}px images, got {x.shape}")

    y = None
    if alpha > 0 and n_scales >= 1:
        y = _lrelu(layers.conv(f"fromRGBLayers.{n_scales - 1}", downscale2d(x)), leak)
    x = _lrelu(layers.conv(f"fromRGBLayers.{n_scales}", x), leak)
    merge = alpha > 0 and n_scales > 1
    for i in reversed(range(n_scales)):
        for j in (0, 1):
            x = _lrelu(layers.conv(f"scaleLayers.{i}.{j}", x), leak)
        x = downscale2d(x)
        if merge:
            merge = False
            x = alpha * y + (1 - alpha) * x
    if _cfg(config, "miniBatchStdDev", False):
        x = zoo_minibatch_stddev(x)
    x = _lrelu(layers.conv("groupScaleZero.0", x), leak)
    x = x.reshape(x.shape[0], -1)
    x = _lrelu(layers.linear("groupScaleZero.1", x), leak)
    return layers.linear("decisionLayer", x)
