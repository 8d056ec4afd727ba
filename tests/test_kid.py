"""KID: the unbiased MMD^2 on a case computed by hand, and equality with torch-fidelity 0.4's KID on the same
features and subsets (synthetic features, and real Inception features of CelebA faces)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from progan_cli.errors import DataError, UsageError
from progan_cli.metrics.kid import compute_kid


def test_hand_computed_mmd():
    # d = 1, k(x, y) = (x y + 1)^3. A = {0, 0}: every k = 1, off-diagonal mean 1. B = {1, 1}: k = 8, mean 8.
    # Across: k(0, 1) = 1, mean 1. MMD^2 = 1 + 8 - 2 * 1 = 7; every subset of 2 is the whole set: std 0.
    out = compute_kid(np.zeros((2, 1)), np.ones((2, 1)), subsets=3, subset_size=2)
    assert out["kid"] == pytest.approx(7.0, abs=1e-12) and out["kid_std"] == pytest.approx(0.0, abs=1e-12)
    # A = {0, 2}, B = {0, 0}: k_aa off-diagonal = (0*2 + 1)^3 = 1 (twice), k_bb = 1, k_ab: (0+1)^3 = 1 for all.
    # MMD^2 = 1 + 1 - 2 = 0: the diagonal (k(2, 2) = 125) must not count.
    assert compute_kid(np.array([[0.0], [2.0]]), np.zeros((2, 1)), 1, 2)["kid"] == pytest.approx(0.0, abs=1e-12)


def test_subsets_shrink_to_the_smaller_set_and_bad_sizes_fail():
    rng = np.random.default_rng(0)
    out = compute_kid(rng.normal(size=(30, 8)), rng.normal(size=(12, 8)), subsets=5, subset_size=1000)
    assert out["subset_size"] == 12 and out["subsets"] == 5
    with pytest.raises(DataError, match="at least 2 images"):
        compute_kid(np.zeros((1, 8)), np.zeros((5, 8)))
    with pytest.raises(UsageError, match="--subsets"):
        compute_kid(np.zeros((5, 8)), np.zeros((5, 8)), subsets=0)


def _torch_fidelity_kid(a: np.ndarray, b: np.ndarray, subsets: int, size: int, seed: int) -> dict:
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
    return metric_kid.kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets,
                                             kid_subset_size=size, rng_seed=seed, verbose=False)


@pytest.mark.parametrize("seed", [2020, 7])
def test_equals_torch_fidelity_on_synthetic_features(seed):
    rng = np.random.default_rng(seed)
    # Features shaped like pool3 (non-negative, 2048-d) from two slightly different distributions.
    a = np.abs(rng.normal(0.3, 0.4, size=(300, 2048)))
    b = np.abs(rng.normal(0.32, 0.4, size=(250, 2048)))
    ours = compute_kid(a, b, subsets=20, subset_size=100, seed=seed)
    ref = _torch_fidelity_kid(a, b, 20, 100, seed)
    assert ours["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9, abs=1e-12)
    assert ours["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_equals_torch_fidelity_on_celeba_pool3(celeba_pool3):
    a, b = celeba_pool3  # float32, as the network computes them
    ours = compute_kid(a, b, subsets=50, subset_size=12, seed=2020)
    # torch-fidelity computes in the features' dtype: fed the same features widened to float64 it must agree
    # to rounding; fed float32 it agrees to float32 rounding of the kernel sums.
    ref64 = _torch_fidelity_kid(a.astype(np.float64), b.astype(np.float64), 50, 12, 2020)
    assert abs(ours["kid"] - ref64["kernel_inception_distance_mean"]) < 1e-12
    assert abs(ours["kid_std"] - ref64["kernel_inception_distance_std"]) < 1e-12
    ref32 = _torch_fidelity_kid(a, b, 50, 12, 2020)
    assert abs(ours["kid"] - ref32["kernel_inception_distance_mean"]) < 1e-6
    assert ours["kid"] > 0  # two different sets of faces
