"""The reals D sees during a fade, against hand numbers and a NumPy re-implementation of the official rule:
the official train.py (process_reals) fades reals as lerp(x, up(down(x)), lod - floor(lod)) with down = 2x2 box
average and up = nearest x2; with alpha = 1 - frac(lod) that is alpha * x + (1 - alpha) * up(down(x))."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from progan_cli.data.stream import fade_reals


def _numpy_fade(x: np.ndarray, alpha: float) -> np.ndarray:
    """The official rule written out in NumPy for NCHW arrays."""
    n, c, h, w = x.shape
    low = x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    up = low.repeat(2, axis=2).repeat(2, axis=3)
    frac_lod = 1.0 - alpha
    return x + frac_lod * (up - x)


def test_a_4x4_image_fades_to_hand_numbers():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    # 2x2 box averages of 0..15 laid out row by row: (0+1+4+5)/4 = 2.5, 4.5, 10.5, 12.5
    low = torch.tensor([[2.5, 2.5, 4.5, 4.5], [2.5, 2.5, 4.5, 4.5],
                        [10.5, 10.5, 12.5, 12.5], [10.5, 10.5, 12.5, 12.5]])
    # alpha 0.25: a quarter of the way from the blurred image to the sharp one, e.g. 2.5 + 0.25 * (0 - 2.5)
    want = torch.tensor([[1.875, 2.125, 3.875, 4.125], [2.875, 3.125, 4.875, 5.125],
                         [9.875, 10.125, 11.875, 12.125], [10.875, 11.125, 12.875, 13.125]])
    assert torch.equal(fade_reals(x, 0.25)[0, 0], want)
    assert torch.equal(fade_reals(x, 0.0)[0, 0], low)  # the fade's first image: as sharp as the old resolution
    assert torch.equal(fade_reals(x, 1.0), x)  # stable phase: the reals as they are


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.875, 1.0])
def test_matches_numpy_on_random_batches(alpha):
    x = np.random.default_rng(3).uniform(-1, 1, (3, 3, 8, 8)).astype(np.float32)
    got = fade_reals(torch.from_numpy(x), alpha).numpy()
    np.testing.assert_allclose(got, _numpy_fade(x.astype(np.float64), alpha), rtol=0, atol=1e-6)
    # Each 2x2 block keeps its mean whatever alpha: fading blurs, it does not brighten or darken.
    block_means = got.reshape(3, 3, 4, 2, 4, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(block_means, x.reshape(3, 3, 4, 2, 4, 2).mean(axis=(3, 5)), atol=1e-6)
