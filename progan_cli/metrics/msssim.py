"""MS-SSIM among generated images: the paper's measure of variation (lower = more diverse).

Karras et al. 2018 report it beside SWD (table 1) following Odena et al. 2017 (*Conditional Image Synthesis
with Auxiliary Classifier GANs*, section 4.2): the mean multi-scale structural similarity (Wang et al. 2003)
over random pairs of generated images, 10,000 pairs by default here. Pairs are consecutive images (0, 1),
(2, 3), ...: generated images come from independent latents, so consecutive ones are random pairs; for a
folder or pyramid the pairs follow the file order.

Per pair, as the official `metrics/ms_ssim.py` (after TensorFlow's msssim.py) computes it on uint8 RGB:
at each of 5 scales a Gaussian window of 11 pixels, sigma 1.5 (both shrunk to the image, size = min(11, side),
sigma = size * 1.5 / 11, when a scale is smaller than 11 pixels), 'valid' filtering, constants (0.01 * 255)^2
and (0.03 * 255)^2; the SSIM and contrast-structure (cs) maps are averaged over pixels and colour channels
together; between scales a 2x2 box average (an odd side repeats its last row or column, as the scipy
'reflect' filtering in TensorFlow's msssim.py does; the official code's version fails on odd sides). Negative
values are clipped to 0, and the pair's score is prod(cs_1..4 ^ w_1..4) * ssim_5 ^ w_5 with Wang et al.'s
weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Five scales need images of at least 16x16.

Computed in float64 (the official code uses float32; tests/test_msssim.py holds ours to pytorch-msssim and to
a transcription of the official code), pairs in chunks so memory is bounded at any resolution.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from progan_cli.errors import DataError

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
FILTER_SIZE = 11
FILTER_SIGMA = 1.5
K1, K2 = 0.01, 0.03
MAX_VAL = 255.0
PAIRS = 10_000
MIN_RES = 2 ** (len(WEIGHTS) - 1)
_CHUNK_BYTES = 512 << 20  # working set of one chunk of pairs (~20 float64 maps of one image each)


def check_size(res: int) -> None:
    """DataError unless images of side `res` have 5 scales (at least 16x16)."""
    if res < MIN_RES:
        raise DataError(f"MS-SSIM's {len(WEIGHTS)} scales need images of at least {MIN_RES}x{MIN_RES}, "
                        f"got {res}x{res}")


def _gaussian(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """1-D Gaussian taps; their outer product is the official 2-D window (MATLAB's fspecial), centred for
    odd and even sizes alike."""
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    return g / g.sum()


def _band(n_in: int, taps: torch.Tensor) -> torch.Tensor:
    """(n_in, n_out) matrix M with M[i + t, i] = taps[t]: a 'valid' 1-D filter as a matrix product.

    Float64 depthwise convolution has no fast kernel on the CPU (0.15 GFLOP/s measured here); the same filter
    as a banded matrix product runs on BLAS: 3x faster at 128x128 although it multiplies 10x as many zeros.
    """
    n_out = n_in - len(taps) + 1
    band = torch.zeros(n_in, n_out, dtype=taps.dtype, device=taps.device)
    cols = torch.arange(n_out, device=taps.device)
    for t, tap in enumerate(taps):
        band[cols + t, cols] = tap
    return band


def _ssim_cs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, the SSIM and cs maps of one scale averaged over pixels and channels: (N,), (N,)."""
    n, c, h, w = x.shape
    size = min(FILTER_SIZE, h, w)
    g = _gaussian(size, size * FILTER_SIGMA / FILTER_SIZE, x.device)
    maps = torch.cat([x, y, x * x, y * y, x * y])
    # The separable window, rows then columns, 'valid'.
    mu1, mu2, s11, s22, s12 = (_band(h, g).T @ (maps @ _band(w, g))).split(n)
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    c1, c2 = (K1 * MAX_VAL) ** 2, (K2 * MAX_VAL) ** 2
    v1 = 2 * (s12 - mu12) + c2
    v2 = (s11 - mu11) + (s22 - mu22) + c2
    ssim = ((2 * mu12 + c1) * v1) / ((mu11 + mu22 + c1) * v2)
    return ssim.flatten(1).mean(dim=1), (v1 / v2).flatten(1).mean(dim=1)


def _box_down(x: torch.Tensor) -> torch.Tensor:
    """2x2 box average; an odd side first repeats its last row/column."""
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
    return F.avg_pool2d(x, 2)


def msssim_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of each pair (a[i], b[i]) of uint8 (or 0..255 float) NCHW images: (N,) float64."""
    if a.shape != b.shape or a.dim() != 4:
        raise DataError(f"MS-SSIM compares pairs of images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    check_size(min(a.shape[-2:]))
    n, c, h, w = a.shape
    chunk = max(1, _CHUNK_BYTES // (20 * c * h * w * 8))
    weights = torch.tensor(WEIGHTS, dtype=torch.float64, device=a.device)
    out = []
    for start in range(0, n, chunk):
        x, y = a[start:start + chunk].double(), b[start:start + chunk].double()
        ssims, css = [], []
        for level in range(len(WEIGHTS)):
            if level:
                x, y = _box_down(x), _box_down(y)
            ssim, cs = _ssim_cs(x, y)
            ssims.append(ssim)
            css.append(cs)
        cs = torch.stack(css[:-1]).clamp_min(0)  # (levels - 1, N)
        out.append(torch.prod(cs ** weights[:-1, None], dim=0) * ssims[-1].clamp_min(0) ** weights[-1])
    return torch.cat(out)


def compute_msssim(batches: Iterable[torch.Tensor], pairs: int = PAIRS) -> dict:
    """Mean MS-SSIM over the first `pairs` consecutive pairs of images the uint8 NCHW batches yield (fewer if
    they run out): {'msssim', 'pairs'}. Batches of any size, odd ones included."""
    if pairs < 1:
        raise DataError(f"MS-SSIM needs at least one pair of images, asked for {pairs}")
    total, done, carry = 0.0, 0, None
    for batch in batches:
        if carry is not None:
            batch = torch.cat([carry, batch.to(carry.device)])
        take = min(len(batch) // 2, pairs - done)
        carry = batch[2 * take:] if take < pairs - done else None
        if take:
            total += float(msssim_pairs(batch[0:2 * take:2], batch[1:2 * take:2]).sum())
            done += take
        if done == pairs:
            break
    if done == 0:
        raise DataError("MS-SSIM needs at least 2 images")
    return {"msssim": total / done, "pairs": done}
