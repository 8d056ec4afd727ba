"""ProGAN generator (Karras et al. 2018, table 2, progressive growing in section 2; official networks.py G_paper)."""

from __future__ import annotations

import torch
from torch import nn

from progan_cli.config import STEM_BIASES
from progan_cli.networks.layers import (
    SQRT2,
    EqualizedConv2d,
    EqualizedLinear,
    block_index,
    block_widths,
    is_fading,
    lerp,
    lrelu,
    pixel_norm,
    upsample2x,
)


class GStem(nn.Module):
    """4x4 block: pixel-normed latent -> dense to nf x 4 x 4 -> lrelu, PN -> 3x3 conv -> lrelu, PN.

    The dense layer's bias is one per channel, added after the reshape (official), or with
    `stem_bias="position"` one per channel and pixel (pytorch_GAN_zoo's formatLayer, a (C, 4, 4) bias).
    """

    def __init__(self, latent_size: int, channels: int, stem_bias: str = "channel") -> None:
        super().__init__()
        if stem_bias not in STEM_BIASES:
            raise ValueError(f"stem_bias must be one of {', '.join(STEM_BIASES)}, not {stem_bias!r}")
        # gain sqrt(2)/4 is a quirk the official code kept from its Theano version.
        self.dense = EqualizedLinear(latent_size, channels * 16, gain=SQRT2 / 4, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels) if stem_bias == "channel" else torch.zeros(channels, 4, 4))
        self.conv = EqualizedConv2d(channels, channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(pixel_norm(z)).reshape(z.shape[0], -1, 4, 4)
        bias = self.bias.to(x.dtype)
        x = pixel_norm(lrelu(x + (bias.reshape(1, -1, 1, 1) if bias.ndim == 1 else bias)))
        return pixel_norm(lrelu(self.conv(x)))


class GBlock(nn.Module):
    """Doubling block: nearest x2 upsample + 3x3 conv (fused), 3x3 conv; each followed by lrelu, PN."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3, resample="up")
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(lrelu(self.conv0(x)))
        return pixel_norm(lrelu(self.conv1(x)))


class Generator(nn.Module):
    """z (N, latent_size) -> images (N, num_channels, res, res), linear output for data in [-1, 1].

    `blocks[k]` and `to_rgb[k]` work at 4 * 2^k. `G(z, res, alpha)` runs the blocks up to `res`; while a
    block fades in (alpha < 1) the output is lerp(upsample(toRGB_old(h_old)), toRGB_new(h_new), alpha), as
    the official code (upsampling the 3-channel image equals upsampling the features before a 1x1 conv).
    """

    def __init__(
        self,
        resolution: int,
        latent_size: int = 512,
        fmap_base: int = 8192,
        fmap_max: int = 512,
        num_channels: int = 3,
        stem_bias: str = "channel",
    ) -> None:
        super().__init__()
        width = block_widths(resolution, fmap_base, fmap_max)
        self.resolution = resolution
        self.latent_size = latent_size
        self.num_channels = num_channels
        self.blocks = nn.ModuleList(
            [GStem(latent_size, width[0], stem_bias)] + [GBlock(width[k - 1], width[k]) for k in range(1, len(width))]
        )
        self.to_rgb = nn.ModuleList([EqualizedConv2d(c, num_channels, 1, gain=1.0) for c in width])

    def forward(self, z: torch.Tensor, res: int, alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_size:
            raise ValueError(f"latents must have shape (N, {self.latent_size}), not {tuple(z.shape)}")
        k = block_index(res, self.resolution)
        fading = is_fading(alpha) and k > 0
        x = z
        for block in self.blocks[:k]:
            x = block(x)
        new = self.to_rgb[k](self.blocks[k](x))
        if not fading:
            return new
        return lerp(upsample2x(self.to_rgb[k - 1](x)), new, alpha)
