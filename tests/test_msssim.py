"""MS-SSIM: identities by hand, per-pair equality with pytorch-msssim (on the pairs where its definition and
the official one coincide) and with a numpy transcription of the official metrics/ms_ssim.py on real CelebA
pairs in colour, at 176x176, at the paper's 128x128 (the 11-tap window shrinks at the 8x8 scale) and at 16x16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import signal

from conftest import shared
from progan_cli.errors import DataError
from progan_cli.metrics.msssim import compute_msssim, msssim_pairs

WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def _official_msssim(img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
    """Per-pair MS-SSIM of NHWC batches, following the official code step by step in float64: MATLAB's
    fspecial window shrunk to small scales, 'valid' filtering of the whole NHWC array with a (1, s, s, 1)
    window, SSIM and cs averaged over H, W and C, 2x2 box downsampling, clipping at 0, weighted product."""
    def fspecial(size: int, sigma: float) -> np.ndarray:
        offset, start, stop = 0.0, -(size // 2), size // 2 + 1
        if size % 2 == 0:
            offset, stop = 0.5, stop - 1
        x, y = np.mgrid[offset + start:stop, offset + start:stop]
        g = np.exp(-((x**2 + y**2) / (2.0 * sigma**2)))
        return g / g.sum()

    im1, im2 = img1.astype(np.float64), img2.astype(np.float64)
    ssims, css = [], []
    for level in range(len(WEIGHTS)):
        if level:  # 2x2 box average between scales
            im1, im2 = ((im[:, 0::2, 0::2] + im[:, 1::2, 0::2] + im[:, 0::2, 1::2] + im[:, 1::2, 1::2]) / 4
                        for im in (im1, im2))
        size = min(11, im1.shape[1], im1.shape[2])
        window = fspecial(size, size * 1.5 / 11)[None, :, :, None]
        mu1, mu2 = (signal.convolve(im, window, mode="valid") for im in (im1, im2))
        s11, s22, s12 = (signal.convolve(p, window, mode="valid") for p in (im1 * im1, im2 * im2, im1 * im2))
        s11, s22, s12 = s11 - mu1 * mu1, s22 - mu2 * mu2, s12 - mu1 * mu2
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        v1, v2 = 2 * s12 + c2, s11 + s22 + c2
        ssims.append((((2 * mu1 * mu2 + c1) * v1) / ((mu1**2 + mu2**2 + c1) * v2)).mean(axis=(1, 2, 3)))
        css.append((v1 / v2).mean(axis=(1, 2, 3)))
    ssims, css = np.clip(np.array(ssims), 0, None), np.clip(np.array(css), 0, None)
    return np.prod(css[:-1] ** WEIGHTS[:-1, None], axis=0) * ssims[-1] ** WEIGHTS[-1]


def _celeba(size: int, mode: str = "RGB") -> torch.Tensor:
    """The 32 full-size CelebA faces, a 176x176 square of each (BOX-resized to `size`), uint8 NCHW."""
    files = sorted(shared("celeba-full").glob("*.jpg"))
    crops = [Image.open(f).convert(mode).convert("RGB").crop((1, 21, 177, 197)) for f in files]
    crops = [c if size == 176 else c.resize((size, size), Image.BOX) for c in crops]
    return torch.from_numpy(np.stack([np.asarray(c) for c in crops])).permute(0, 3, 1, 2).contiguous()


def test_identical_pairs_score_one_and_small_images_fail():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))
    np.testing.assert_allclose(msssim_pairs(x, x).numpy(), 1.0, rtol=0, atol=1e-12)
    with pytest.raises(DataError, match="at least 16x16"):
        msssim_pairs(x[:, :, :8, :8], x[:, :, :8, :8])


def test_streams_pairs_across_odd_batches():
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (11, 3, 16, 16), dtype=np.uint8))
    want = msssim_pairs(x[0:10:2], x[1:10:2])
    for sizes in ([3, 5, 3], [1] * 11, [11]):
        out = compute_msssim(x.split(sizes), pairs=5)
        assert out["pairs"] == 5 and out["msssim"] == pytest.approx(float(want.mean()), rel=1e-12)
    assert compute_msssim(x.split([3, 5, 3]), pairs=2)["msssim"] == pytest.approx(float(want[:2].mean()), rel=1e-12)
    assert compute_msssim([x], pairs=100)["pairs"] == 5  # runs out of images: the pairs it has


@pytest.mark.parametrize("size", [176, 128, 16])
def test_equals_official_code_transcription_on_celeba(size):
    x = _celeba(size)
    a, b = x[0::2], x[1::2]
    want = _official_msssim(a.permute(0, 2, 3, 1).numpy(), b.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(msssim_pairs(a, b).numpy(), want, rtol=0, atol=1e-10)
    assert 0.05 < want.mean() < 0.6  # different faces: far from 0 and 1


@pytest.mark.slow
def test_equals_pytorch_msssim_on_celeba():
    # pytorch-msssim takes the product over scales per colour channel and then averages the channels; the
    # official code averages SSIM and cs over the channels at each scale first. The two coincide when the
    # channels are equal, so the pairs here are the faces in grey (as RGB). It needs sides > 160 (no window
    # shrinking): 176x176.
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x = _celeba(176, mode="L")
    a, b = x[0::2], x[1::2]
    ours = msssim_pairs(a, b)
    ref = pytorch_msssim.ms_ssim(a.double(), b.double(), data_range=255, size_average=False)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=0, atol=1e-4)  # its window is float32
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5**2))
    window = (g / g.sum()).view(1, 1, 1, 11).repeat(3, 1, 1, 1)
    ref = pytorch_msssim.ms_ssim(a.double(), b.double(), data_range=255, size_average=False, win=window)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=0, atol=1e-12)
    assert float(ours.mean()) == pytest.approx(float(ref.mean()), abs=1e-12)
