"""The building blocks of ProGAN's networks (Karras et al. 2018, section 4 and appendix A).

Equalized learning rate (section 4.1): weights are drawn from N(0, 1) and multiplied at run time by
gain / sqrt(fan_in), so Adam's per-parameter step sizes are equal for every layer. Biases start at zero and
are not scaled. Pixel norm (section 4.2) and minibatch standard deviation (section 3) follow the official
code (tkarras/progressive_growing_of_gans, networks.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from progan_cli.config import MBSTD_VARIANTS
from progan_cli.resolutions import is_resolution

LRELU_SLOPE = 0.2
SQRT2 = math.sqrt(2.0)


class EqualizedConv2d(nn.Module):
    """k x k convolution, 'same' padding, with the equalized-lr run-time weight scale.

    The scale multiplies the weight tensor rather than the activations: the same result as scaling the
    output, and its cost does not grow with batch or resolution.

    `resample="up"` computes conv(upsample2x(x)) and `resample="down"` computes downsample2x(conv(x)) as one
    stride-2 (transposed) convolution with a 4x4 kernel made from the 3x3 one, like the official
    `upscale2d_conv2d` / `conv2d_downscale2d` with fused_scale: the same function and parameters, for 4/9 of
    the multiply-adds and no full-size intermediate. The 4x4 kernel (the 3x3 one summed at its four 1-pixel
    shifts, times the run-time scale) is one small matmul with a constant 9 x 16 map, forward and backward.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        gain: float = SQRT2,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', not {resample!r}")
        if resample and kernel_size != 3:
            raise ValueError("fused resampling is defined for 3x3 kernels")
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.resample = resample
        if resample:
            self.register_buffer("fused_map", _fused_map(resample, self.scale), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample is None:
            return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)
        o, i = self.weight.shape[:2]
        if self.resample == "up":  # conv_transpose2d takes its weight as (in, out, kh, kw)
            w = (self.weight.transpose(0, 1).reshape(i * o, 9) @ self.fused_map).reshape(i, o, 4, 4)
            return F.conv_transpose2d(x, w, self.bias, stride=2, padding=1)
        w = (self.weight.reshape(o * i, 9) @ self.fused_map).reshape(o, i, 4, 4)
        return F.conv2d(x, w, self.bias, stride=2, padding=1)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, scale={self.scale:.4g}, resample={self.resample}"


def _fused_map(resample: str, scale: float) -> torch.Tensor:
    """(9, 16) map from a 3x3 kernel to the fused 4x4 one (official fused_scale), the weight scale included.

    Tap (ky, kx) lands on the 2x2 taps (ky..ky+1, kx..kx+1) of the 4x4 kernel. Down: averaged (x 0.25), as
    the 2x2 pool after the conv. Up: flipped, as conv_transpose2d correlates with the flipped kernel.
    """
    m = torch.zeros(3, 3, 4, 4)
    for ky in range(3):
        for kx in range(3):
            m[ky, kx, ky : ky + 2, kx : kx + 2] = 1.0
    m = m.flip(2, 3) if resample == "up" else m * 0.25
    return (m * scale).reshape(9, 16)


class EqualizedLinear(nn.Module):
    """Dense layer with the equalized-lr run-time weight scale (fan_in = in_features)."""

    def __init__(self, in_features: int, out_features: int, gain: float = SQRT2, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"{i}, {o}, bias={self.bias is not None}, scale={self.scale:.4g}"


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean over channels of x^2 + eps), per pixel (section 4.2); keeps x's dtype.

    A bf16 (or fp16) activation is normalised in fp32 and rounded once back to its dtype: CUDA autocast runs
    rsqrt (and the square, a pow) in fp32, and bf16 times an fp32 scale would otherwise hand the next layer
    an fp32 activation (twice the bytes, an extra cast in every G block). fp32 input is computed as before.
    """
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    return (x * torch.rsqrt(wide.square().mean(dim=1, keepdim=True) + eps)).to(x.dtype)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU with slope 0.2, the only non-linearity in both networks (appendix A.1)."""
    return F.leaky_relu(x, LRELU_SLOPE)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upscaling (official `upscale2d`)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x2 box average (official `downscale2d`)."""
    return F.avg_pool2d(x, 2)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, variant: str = "official") -> torch.Tensor:
    """Append one feature map: the average standard deviation of the features over a group (section 3).

    "official" is the official `minibatch_stddev_layer`: G = min(group_size, N) samples per group, sample i in
    group i mod (N / G); per group, the biased variance over its G samples of every feature and pixel,
    sqrt(var + 1e-8), averaged over C, H, W to one number, which fills the extra map of each sample of the
    group. "gan-zoo" is pytorch_GAN_zoo's `miniBatchStdDev`, a different function that its published
    discriminators were trained with: consecutive samples form a group (one group of all N when N is not a
    multiple of G), the variance is unbiased, and a lone sample gets zeros. Computed in fp32 under autocast,
    as the official code does, and cast back to x's dtype.
    """
    n, c, h, w = x.shape
    g = min(group_size, n)
    if variant == "gan-zoo":
        if n % g:
            g = n
        if g == 1:
            return torch.cat([x, x.new_zeros(n, 1, h, w)], dim=1)
        y = x.float().reshape(n // g, g, c, h, w).var(dim=1)
        y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (M,): one value per group
        y = y.to(x.dtype).reshape(n // g, 1, 1, 1, 1).expand(-1, g, 1, h, w).reshape(n, 1, h, w)
        return torch.cat([x, y], dim=1)
    if variant != "official":
        raise ValueError(f"minibatch stddev variant {variant!r} is not one of {', '.join(MBSTD_VARIANTS)}")
    if n % g:
        raise ValueError(f"minibatch stddev: batch {n} is not a multiple of the group size {g}")
    y = x.float().reshape(g, n // g, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (M,): one value per group
    y = y.to(x.dtype).reshape(1, n // g, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, y], dim=1)


def nf(stage: int, fmap_base: int = 8192, fmap_max: int = 512) -> int:
    """Feature maps at a stage: min(fmap_base / 2^stage, fmap_max); block r uses stage log2(r) - 1."""
    return min(fmap_base // 2**stage, fmap_max)


def block_widths(resolution: int, fmap_base: int, fmap_max: int) -> list[int]:
    """Feature maps of the blocks at 4, 8, ..., resolution: nf(1), nf(2), ... (official networks.py)."""
    return [nf(s, fmap_base, fmap_max) for s in range(1, block_index(resolution, resolution) + 2)]


def block_index(res: int, resolution: int) -> int:
    """Index of the block that works at `res`: log2(res) - 2, 0 for 4x4 (the official code's `stage`, which
    picks the width nf(stage), is one more); ValueError unless res is 4, 8, ..., resolution."""
    if not is_resolution(res, hi=resolution):
        raise ValueError(f"resolution {res} is not a power of two between 4 and {resolution}")
    return res.bit_length() - 3


def is_fading(alpha: float | torch.Tensor) -> bool:
    """Whether a forward must take the fade-in path; a tensor alpha always does (no recompiles per value)."""
    if torch.is_tensor(alpha):
        return True
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], not {alpha}")
    return alpha < 1.0


def lerp(a: torch.Tensor, b: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """a + (b - a) * alpha: alpha = 1 gives the newest block's path (the fade-in of section 2)."""
    return a + (b - a) * alpha
