"""Plain numpy forward passes of the official ProGAN networks (`G_paper`, `D_paper` of
tkarras/progressive_growing_of_gans, `networks.py`), written from the formulas (read, not copied).

Why it exists: the importer of NVIDIA's pickles maps TF variables onto progan's PyTorch layers, and the
mistakes that matter there (a missing kernel flip, the fused up-conv's fan-in, the Dense gain sqrt(2)/4, the
per-channel bias after the reshape, the minibatch-stddev group order, the lod blend) all give plausible
images. This module computes what the TF graph computes, from the variable dict alone (`{name: array}` as
the pickles store them, or the list of pairs), so a test can hold the importer to it. Nothing here imports
progan_cli.

TensorFlow semantics used: conv2d(x, w[kh, kw, in, out], 'SAME') is a cross-correlation whose padding is
split with the smaller half before (k // 2 on both sides for odd k at stride 1; 1 and 1 for a 4x4 kernel at
stride 2 on an even size); conv2d_transpose(x, w[kh, kw, out, in], stride 2, 'SAME') is the gradient of that
strided conv with respect to its input: input pixel (i, j) adds w[a, b] x[i, j] to output (2i + a - 1,
2j + b - 1) for the 4x4 fused kernel.

Everything runs in float64 (the official graph is float32; the difference is ~1e-6 relative, far below the
mistakes above). Always the 'linear' structure: it is the graph the variables' names come from (the template
graph) and computes, at every lod, what the 'recursive' one computes.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------------------
# Primitive layers (NCHW, float64)

def lrelu(x: np.ndarray, alpha: float = 0.2) -> np.ndarray:
    """The official leaky ReLU, max(alpha * x, x)."""
    return np.maximum(x * alpha, x)


def pixel_norm(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """x * rsqrt(mean over channels (axis 1) of x^2 + eps), for dense [N, C] and conv [N, C, H, W] alike."""
    return x / np.sqrt(np.mean(np.square(x), axis=1, keepdims=True) + eps)


def upscale2d(x: np.ndarray, factor: int = 2) -> np.ndarray:
    """Nearest-neighbour upscaling: every pixel becomes a factor x factor block."""
    if factor == 1:
        return x
    return np.repeat(np.repeat(x, factor, axis=2), factor, axis=3)


def downscale2d(x: np.ndarray, factor: int = 2) -> np.ndarray:
    """Box-filter downscaling (tf.nn.avg_pool with ksize = strides = factor, 'VALID')."""
    if factor == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, c, h // factor, factor, w // factor, factor).mean(axis=(3, 5))


def lerp_clip(a, b, t: float):
    """a + (b - a) * clip(t, 0, 1): the official blend between resolutions."""
    return a + (b - a) * min(max(float(t), 0.0), 1.0)


def _same_pad(size: int, k: int, stride: int) -> tuple[int, int, int]:
    """TF 'SAME': output ceil(size / stride), total padding split with the smaller half before."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1) -> np.ndarray:
    """tf.nn.conv2d(x, w, strides, 'SAME', 'NCHW'): cross-correlation, w laid out [kh, kw, in, out].

    Explicit gather over the kernel taps: out[n, o, i, j] = sum_{a, b, c} xpad[n, c, i*s + a, j*s + b] w[a, b, c, o].
    """
    n, c, h, wd = x.shape
    kh, kw, cin, cout = w.shape
    assert cin == c, (w.shape, x.shape)
    oh, ph0, ph1 = _same_pad(h, kh, stride)
    ow, pw0, pw1 = _same_pad(wd, kw, stride)
    xp = np.pad(x, ((0, 0), (0, 0), (ph0, ph1), (pw0, pw1)))
    out = np.zeros((n, oh, ow, cout), dtype=np.result_type(x, w))
    for a in range(kh):
        for b in range(kw):
            patch = xp[:, :, a:a + stride * (oh - 1) + 1:stride, b:b + stride * (ow - 1) + 1:stride]
            out += np.tensordot(patch, w[a, b], axes=([1], [0]))  # [n, oh, ow, cout]
    return out.transpose(0, 3, 1, 2)


def conv2d_transpose(x: np.ndarray, w: np.ndarray, out_hw: tuple[int, int], stride: int = 2) -> np.ndarray:
    """tf.nn.conv2d_transpose(x, w, [N, out, *out_hw], strides, 'SAME', 'NCHW'), w laid out [kh, kw, out, in].

    TF defines it as the gradient of the 'SAME' strided conv2d that maps an out_hw image with filter
    [kh, kw, out, in] to x's size; so every input pixel scatters its kernel-weighted values:
    z[n, o, i*s + a - pad, j*s + b - pad] += x[n, c, i, j] * w[a, b, o, c], pad being the forward conv's
    'SAME' padding before the image; writes that fall outside the output are dropped.
    """
    n, c, h, wd = x.shape
    kh, kw, cout, cin = w.shape
    assert cin == c, (w.shape, x.shape)
    oh, ow = out_hw
    fh, ph0, _ = _same_pad(oh, kh, stride)
    fw, pw0, _ = _same_pad(ow, kw, stride)
    assert (fh, fw) == (h, wd), f"a SAME stride-{stride} conv of {out_hw} gives {(fh, fw)}, not {(h, wd)}"
    bh = max(stride * (h - 1) + kh, ph0 + oh)
    bw = max(stride * (wd - 1) + kw, pw0 + ow)
    buf = np.zeros((n, cout, bh, bw), dtype=np.result_type(x, w))
    for a in range(kh):
        for b in range(kw):
            contrib = np.tensordot(x, w[a, b], axes=([1], [1]))  # [n, h, w, cout]
            rows, cols = slice(a, a + stride * (h - 1) + 1, stride), slice(b, b + stride * (wd - 1) + 1, stride)
            buf[:, :, rows, cols] += contrib.transpose(0, 3, 1, 2)
    return buf[:, :, ph0:ph0 + oh, pw0:pw0 + ow]


def pad_and_sum_kernel(w: np.ndarray) -> np.ndarray:
    """The official fused-scale kernel trick: pad the k x k kernel by one on every side, add its four
    one-pixel shifts, giving a (k+1) x (k+1) kernel (upscale2d_conv2d, conv2d_downscale2d)."""
    p = np.pad(w, ((1, 1), (1, 1), (0, 0), (0, 0)))
    return p[1:, 1:] + p[:-1, 1:] + p[1:, :-1] + p[:-1, :-1]


def minibatch_stddev(x: np.ndarray, group_size: int = 4) -> np.ndarray:
    """The official minibatch_stddev_layer: G = min(group_size, N); reshape [G, M, C, H, W] (so sample i sits
    in group i mod M), subtract the group mean, biased variance over the group, sqrt(var + 1e-8), mean over
    C, H, W, one value per group tiled over the group's samples and pixels, appended as the last channel."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"the official layer needs the minibatch ({n}) divisible by the group size ({g})")
    y = x.reshape(g, n // g, c, h, w)
    y = y - y.mean(axis=0, keepdims=True)
    y = np.sqrt(np.mean(np.square(y), axis=0) + 1e-8)  # [M, C, H, W]
    y = y.mean(axis=(1, 2, 3))  # [M]
    y = np.tile(y, g)  # [N]: sample i gets y[i mod M]
    return np.concatenate([x, np.broadcast_to(y[:, None, None, None], (n, 1, h, w))], axis=1)


# ----------------------------------------------------------------------------------------------------------
# Equalized-learning-rate layers read from the variable dict

def he_scale(shape, gain: float, fan_in: int | None = None) -> float:
    """get_weight's run-time multiplier (use_wscale): gain / sqrt(fan_in), fan_in = prod(shape[:-1]) unless
    given (the fused up-conv passes k*k*in: its layout [k, k, out, in] would otherwise give k*k*out)."""
    if fan_in is None:
        fan_in = int(np.prod(shape[:-1]))
    return gain / math.sqrt(fan_in)


class _Vars:
    """The variable dict (or list of pairs) in float64; a missing name is reported with the names there are."""

    def __init__(self, variables):
        items = variables.items() if isinstance(variables, Mapping) else variables
        self.v = {str(k): np.asarray(a, dtype=np.float64) for k, a in items}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.v:
            raise KeyError(f"variable {name!r} is missing (have {sorted(self.v)})")
        return self.v[name]

    def __contains__(self, name: str) -> bool:
        return name in self.v


def _layer_conv(v: _Vars, scope: str, x: np.ndarray, gain: float = SQRT2) -> np.ndarray:
    """conv2d (stride 1, 'SAME') with the scaled weight, then the per-channel bias."""
    w = v[scope + "/weight"]
    y = conv2d(x, w * he_scale(w.shape, gain))
    return y + v[scope + "/bias"][None, :, None, None]


def _resolution_log2(v: _Vars, prefix: str) -> int:
    """log2 of the network's resolution, from its ToRGB_lod* / FromRGB_lod* names (lods 0 .. R-2)."""
    lods = [int(k.split("/")[0][len(prefix):]) for k in v.v if k.startswith(prefix) and k.endswith("/weight")]
    if not lods or sorted(lods) != list(range(max(lods) + 1)):
        raise ValueError(f"expected {prefix}0 .. {prefix}n, got lods {sorted(lods)}")
    return max(lods) + 2


def _lod(v: _Vars, lod: float | None) -> float:
    """The level of detail: the caller's, or the value stored in the network's `lod` variable."""
    if lod is not None:
        return float(lod)
    return float(v["lod"]) if "lod" in v else 0.0


# ----------------------------------------------------------------------------------------------------------
# G_paper

def official_G(variables, latents: np.ndarray, labels: np.ndarray | None = None, *,
               lod: float | None = None) -> np.ndarray:
    """G_paper (use_wscale, pixel norm, leaky ReLU 0.2, normalize_latents, linear structure) -> [N, C, R, R].

    `variables`: {name: array} (or a list of pairs) with the official names. Fused (`{r}x{r}/Conv0_up`) or
    non-fused (`{r}x{r}/Conv0`) blocks are detected per block. `lod` defaults to the `lod` variable's value:
    the output is always at the full resolution, lower levels nearest-upscaled and blended by
    lerp_clip(img, upscaled, lod - level) at every level, as the template graph does. Labels are concatenated
    to the latents before the first pixel norm (so they are normalised with them), as in the official code.
    """
    v = _Vars(variables)
    r_log2 = _resolution_log2(v, "ToRGB_lod")
    lod_in = _lod(v, lod)
    x = np.asarray(latents, dtype=np.float64)
    if labels is not None and np.asarray(labels).shape[-1]:
        x = np.concatenate([x, np.asarray(labels, dtype=np.float64)], axis=1)
    n = x.shape[0]

    def torgb(h, res):
        return _layer_conv(v, f"ToRGB_lod{r_log2 - res}", h, gain=1.0)

    # 4x4: PN(combo) -> dense (gain sqrt(2)/4) -> reshape [N, nf, 4, 4] -> bias per channel -> lrelu -> PN.
    x = pixel_norm(x)
    w = v["4x4/Dense/weight"]
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"4x4/Dense takes {w.shape[0]} inputs, got latents+labels of {x.shape[1]}")
    x = x @ (w * he_scale(w.shape, SQRT2 / 4))
    x = x.reshape(n, -1, 4, 4) + v["4x4/Dense/bias"][None, :, None, None]
    x = pixel_norm(lrelu(x))
    x = pixel_norm(lrelu(_layer_conv(v, "4x4/Conv", x)))
    images = torgb(x, 2)

    for res in range(3, r_log2 + 1):
        scope = f"{2 ** res}x{2 ** res}"
        if scope + "/Conv0_up/weight" in v:
            w = v[scope + "/Conv0_up/weight"]  # [k, k, out, in]; fan_in = k*k*in, not prod(shape[:-1])
            k, _, _, cin = w.shape
            kernel = pad_and_sum_kernel(w * he_scale(w.shape, SQRT2, fan_in=k * k * cin))
            h, wd = x.shape[2:]
            x = conv2d_transpose(x, kernel, (2 * h, 2 * wd), stride=2)
            x = x + v[scope + "/Conv0_up/bias"][None, :, None, None]
        else:
            x = _layer_conv(v, scope + "/Conv0", upscale2d(x))
        x = pixel_norm(lrelu(x))
        x = pixel_norm(lrelu(_layer_conv(v, scope + "/Conv1", x)))
        img = torgb(x, res)
        images = lerp_clip(img, upscale2d(images), lod_in - (r_log2 - res))
    return images


# ----------------------------------------------------------------------------------------------------------
# D_paper

def official_D(variables, images: np.ndarray, mbstd_group_size: int = 4, *,
               lod: float | None = None) -> np.ndarray:
    """D_paper (use_wscale, linear structure) -> combo_out [N, 1 + label_size] (scores first, then labels).

    Fused blocks (`Conv1_down`) pool inside the convolution and apply the leaky ReLU after:
    lrelu(conv_stride2(x, pad_and_sum(w) / 4) + b). Non-fused ones (`Conv1`) pool after the activation:
    pool(lrelu(conv(x) + b)). Those are different functions, so both are here. `mbstd_group_size` <= 1
    disables the minibatch stddev (then 4x4/Conv must take nf(1) channels, not nf(1) + 1); `lod` defaults to
    the `lod` variable's value.
    """
    v = _Vars(variables)
    r_log2 = _resolution_log2(v, "FromRGB_lod")
    lod_in = _lod(v, lod)
    img = np.asarray(images, dtype=np.float64)
    if img.shape[2] != 2 ** r_log2 or img.shape[3] != 2 ** r_log2:
        raise ValueError(f"D takes {2 ** r_log2}x{2 ** r_log2} images, got {img.shape}")

    def fromrgb(h, res):
        return lrelu(_layer_conv(v, f"FromRGB_lod{r_log2 - res}", h))

    x = fromrgb(img, r_log2)
    for res in range(r_log2, 2, -1):
        scope = f"{2 ** res}x{2 ** res}"
        x = lrelu(_layer_conv(v, scope + "/Conv0", x))
        if scope + "/Conv1_down/weight" in v:
            w = v[scope + "/Conv1_down/weight"]  # [k, k, in, out]
            kernel = pad_and_sum_kernel(w * he_scale(w.shape, SQRT2)) * 0.25
            x = conv2d(x, kernel, stride=2) + v[scope + "/Conv1_down/bias"][None, :, None, None]
            x = lrelu(x)
        else:
            x = downscale2d(lrelu(_layer_conv(v, scope + "/Conv1", x)))
        img = downscale2d(img)
        x = lerp_clip(x, fromrgb(img, res - 1), lod_in - (r_log2 - res))

    # 4x4 head.
    w = v["4x4/Conv/weight"]
    if mbstd_group_size > 1:
        x = minibatch_stddev(x, mbstd_group_size)
    if w.shape[2] != x.shape[1]:
        raise ValueError(f"4x4/Conv takes {w.shape[2]} channels, got {x.shape[1]} (mbstd_group_size "
                         f"{mbstd_group_size})")
    x = lrelu(_layer_conv(v, "4x4/Conv", x))
    x = x.reshape(x.shape[0], -1)  # NCHW flatten: index c*16 + h*4 + w
    w = v["4x4/Dense0/weight"]
    x = lrelu(x @ (w * he_scale(w.shape, SQRT2)) + v["4x4/Dense0/bias"])
    w = v["4x4/Dense1/weight"]
    return x @ (w * he_scale(w.shape, 1.0)) + v["4x4/Dense1/bias"]


# ----------------------------------------------------------------------------------------------------------

def official_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] -> uint8 as the official code does it (misc.adjust_dynamic_range then
    np.rint(...).clip(0, 255); Network.run's out_mul/out_add + tf.round + saturate_cast is the same):
    x * 127.5 + 127.5, rounded half to even, clipped. Computed in float32 for float32 input (the official
    arrays are float32), else float64: the precision decides values that land near a .5 boundary."""
    x = np.asarray(images)
    dt = np.float32 if x.dtype == np.float32 else np.float64
    x = x.astype(dt, copy=False) * dt(127.5) + dt(127.5)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
