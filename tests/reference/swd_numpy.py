"""Plain numpy SWD, step for step as the official `metrics/sliced_wasserstein.py` of
tkarras/progressive_growing_of_gans computes it (read, not copied), with the random choices passed in.

Two jobs: the independent reference that `tests/test_swd.py` holds `progan_cli.metrics.swd.compute_swd` to,
and the speed anchor of `benchmarks/swd_speed.py`. The official code draws its centres and
directions from numpy's global generator; here they come in as arrays so both implementations can be fed the
same ones (`progan_cli.metrics.swd.SWDSampler` draws them). One deliberate difference: the per-channel
normalisation and the mean absolute difference are computed in float64 (the official float32 statistics over
millions of values drift by up to ~1e-6 relative, and SWD amplifies a systematic shift or scale of a set about
a hundredfold: noise, not protocol).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

# 5x5 binomial filter, as cv2.pyrDown/pyrUp use it.
_GAUSS = np.float32(np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0)[None, None]


def pyr_down(x: np.ndarray) -> np.ndarray:
    """Blur with mirror borders, keep every second pixel."""
    return scipy.ndimage.convolve(x, _GAUSS, mode="mirror")[:, :, ::2, ::2]


def pyr_up(x: np.ndarray) -> np.ndarray:
    """Insert zeros between pixels, blur with 4x the filter (mirror borders)."""
    n, c, h, w = x.shape
    z = np.zeros((n, c, 2 * h, 2 * w), x.dtype)
    z[:, :, ::2, ::2] = x
    return scipy.ndimage.convolve(z, _GAUSS * 4.0, mode="mirror")


def laplacian_pyramid(images: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """Levels from full resolution down; each is gaussian - up(next gaussian), the last the gaussian."""
    pyramid = [np.float32(images)]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] -= pyr_up(pyramid[-1])
    return pyramid


def descriptors(level: np.ndarray, centres: np.ndarray, nhood_size: int = 7) -> np.ndarray:
    """(N*K, 3, 7, 7) neighbourhoods of `level` (N,3,H,W) around centres (N,K,2) as (y, x).

    Axis 2 runs over x and axis 3 over y, as the official ogrid indexing lays them out.
    """
    n, c, h, w = level.shape
    k = centres.shape[1]
    r = nhood_size // 2
    nhood, chan, dx, dy = np.ogrid[0 : n * k, 0:c, -r : r + 1, -r : r + 1]
    img = nhood // k
    y = dy + centres[:, :, 0].reshape(-1, 1, 1, 1)
    x = dx + centres[:, :, 1].reshape(-1, 1, 1, 1)
    return level.flat[((img * c + chan) * h + y) * w + x]


def finalize(desc: np.ndarray) -> np.ndarray:
    """Normalise each colour channel over the whole set (mean 0, std 1), flatten to (N*K, 147)."""
    wide = desc.astype(np.float64)
    wide -= np.mean(wide, axis=(0, 2, 3), keepdims=True)
    wide /= np.std(wide, axis=(0, 2, 3), keepdims=True)
    return wide.astype(np.float32).reshape(desc.shape[0], -1)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    """Mean over repeats of the mean |sorted(a @ dirs) - sorted(b @ dirs)|; directions (R, 147, D)."""
    results = []
    for dirs in directions:
        proj_a = np.sort(np.matmul(a, dirs), axis=0)
        proj_b = np.sort(np.matmul(b, dirs), axis=0)
        results.append(np.mean(np.abs(proj_a - proj_b), dtype=np.float64))
    return float(np.mean(results))


def numpy_swd(
    a: np.ndarray,
    b: np.ndarray,
    centres_a: dict[int, np.ndarray],
    centres_b: dict[int, np.ndarray],
    directions: dict[int, np.ndarray],
) -> dict[int, float]:
    """SWD x1e3 per level (keyed by resolution, full resolution first) of uint8 NCHW image sets a and b."""
    resolutions = sorted(directions, reverse=True)
    dist = {}
    pyr_a = laplacian_pyramid(a, len(resolutions))
    pyr_b = laplacian_pyramid(b, len(resolutions))
    for res, level_a, level_b in zip(resolutions, pyr_a, pyr_b):
        desc_a = finalize(descriptors(level_a, centres_a[res]))
        desc_b = finalize(descriptors(level_b, centres_b[res]))
        dist[res] = sliced_wasserstein(desc_a, desc_b, directions[res]) * 1e3
    return dist
