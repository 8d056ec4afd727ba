"""ProGAN discriminator (Karras et al. 2018, table 2; progressive growing in section 2, minibatch stddev in
section 3; official networks.py D_paper)."""

from __future__ import annotations

import torch
from torch import nn

from progan_cli.networks.layers import (
    EqualizedConv2d,
    EqualizedLinear,
    block_index,
    block_widths,
    downsample2x,
    is_fading,
    lerp,
    lrelu,
    minibatch_stddev,
    nf,
)


class DBlock(nn.Module):
    """Halving block: 3x3 conv, lrelu, then the second 3x3 conv and the 2x2 average pool.

    `fused` (the official D_paper's fused_scale, its default): the pool happens inside the convolution, before
    bias and lrelu: lrelu(pool(conv(x)) + b). Not fused (the released 2018 networks, converted from the Theano
    code, and pytorch_GAN_zoo): pool(lrelu(conv(x) + b)). The leaky ReLU does not commute with the pool, so
    these are two functions of the same parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, fused: bool = True) -> None:
        super().__init__()
        self.fused = fused
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, resample="down" if fused else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = lrelu(self.conv1(lrelu(self.conv0(x))))
        return x if self.fused else downsample2x(x)


class DHead(nn.Module):
    """4x4 block: minibatch stddev -> 3x3 conv -> dense to nf(0) -> dense to one score (gain 1)."""

    def __init__(self, channels: int, dense_channels: int, mbstd_group_size: int, mbstd_variant: str) -> None:
        super().__init__()
        self.mbstd_group_size, self.mbstd_variant = mbstd_group_size, mbstd_variant
        extra = 1 if mbstd_group_size > 1 else 0
        self.conv = EqualizedConv2d(channels + extra, channels, 3)
        self.dense0 = EqualizedLinear(channels * 16, dense_channels)
        self.dense1 = EqualizedLinear(dense_channels, 1, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd_group_size > 1:
            x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_variant)
        x = lrelu(self.conv(x))
        x = lrelu(self.dense0(x.flatten(1)))
        return self.dense1(x).squeeze(1)


class Discriminator(nn.Module):
    """images (N, num_channels, res, res) -> scores (N,); res is read from the input.

    `from_rgb[k]` and `blocks[k]` work at 4 * 2^k (`blocks[0]` is the 4x4 head). While a block fades in
    (alpha < 1) the features entering the next-lower block are
    lerp(fromRGB_old(avgpool(x)), block(fromRGB_new(x)), alpha), as the official code.
    `mbstd_group_size` <= 1 drops the minibatch stddev layer; `mbstd_variant` and `fused` choose the variants
    that published networks were trained with (see `minibatch_stddev` and `DBlock`).
    """

    def __init__(
        self,
        resolution: int,
        fmap_base: int = 8192,
        fmap_max: int = 512,
        num_channels: int = 3,
        mbstd_group_size: int = 4,
        mbstd_variant: str = "official",
        fused: bool = True,
    ) -> None:
        super().__init__()
        width = block_widths(resolution, fmap_base, fmap_max)
        self.resolution = resolution
        self.num_channels = num_channels
        self.from_rgb = nn.ModuleList([EqualizedConv2d(num_channels, c, 1) for c in width])
        self.blocks = nn.ModuleList(
            [DHead(width[0], nf(0, fmap_base, fmap_max), mbstd_group_size, mbstd_variant)]
            + [DBlock(width[k], width[k - 1], fused) for k in range(1, len(width))]
        )

    def forward(self, x: torch.Tensor, alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.num_channels or x.shape[2] != x.shape[3]:
            raise ValueError(f"images must have shape (N, {self.num_channels}, res, res), not {tuple(x.shape)}")
        k = block_index(x.shape[-1], self.resolution)
        fading = is_fading(alpha) and k > 0
        h = self.blocks[k](lrelu(self.from_rgb[k](x)))
        if fading:
            h = lerp(lrelu(self.from_rgb[k - 1](downsample2x(x))), h, alpha)
        for block in reversed(self.blocks[:k]):
            h = block(h)
        return h
