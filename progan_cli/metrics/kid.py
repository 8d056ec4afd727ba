"""Kernel Inception Distance (Binkowski et al., *Demystifying MMD GANs*, ICLR 2018).

The squared maximum mean discrepancy between two sets of pool3 features under the cubic polynomial kernel
k(x, y) = (x . y / d + 1)^3 (d = 2048), estimated without bias: the kernel's diagonal is left out of the
within-set sums, (sum K_aa - tr K_aa + sum K_bb - tr K_bb) / (m (m - 1)) - 2 sum K_ab / m^2. Unlike FID it
has an unbiased estimator, so small samples can be compared with large ones. Reported as the mean and the
population std (ddof 0) over `subsets` random subsets of `subset_size` features from each set.

The subsets are drawn exactly as torch-fidelity 0.4 draws them (numpy `RandomState(seed).choice` without
replacement, A's subset before B's, for each subset in turn), so with its seed (2020) and a subset size no
larger than either set the two give the same number (tests/test_kid.py). Where a set holds fewer features than
`subset_size`, the subsets shrink to the smaller set, as stylegan2-ada's KID does (torch-fidelity refuses).
Computed in float64 on the given device.
"""

from __future__ import annotations

import numpy as np
import torch

from progan_cli.errors import DataError, UsageError

SUBSETS = 100
SUBSET_SIZE = 1000


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 between equal-sized feature sets (m, d) under the cubic polynomial kernel."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    within = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
    return float(within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def subset_size_for(n_a: int, n_b: int, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE) -> int:
    """The subset size KID uses for sets of n_a and n_b images; UsageError/DataError for what cannot work
    (callers check before running Inception)."""
    if subsets < 1:
        raise UsageError(f"--subsets must be at least 1, got {subsets}")
    if subset_size < 2:
        raise UsageError(f"--subset-size must be at least 2, got {subset_size}")
    if min(n_a, n_b) < 2:
        raise DataError(f"KID needs at least 2 images in each set, got {n_a} and {n_b}")
    return min(subset_size, n_a, n_b)


def compute_kid(a: np.ndarray, b: np.ndarray, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE,
                seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """KID between pool3 features `a` (N_a, d) and `b` (N_b, d): {'kid', 'kid_std', 'subsets', 'subset_size'}."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise DataError(f"KID needs two feature sets of one dimension, got {a.shape} and {b.shape}")
    m = subset_size_for(len(a), len(b), subsets, subset_size)
    fa = torch.as_tensor(np.asarray(a), device=device).double()
    fb = torch.as_tensor(np.asarray(b), device=device).double()
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        pick_a = torch.as_tensor(rng.choice(len(a), m, replace=False), device=device)
        pick_b = torch.as_tensor(rng.choice(len(b), m, replace=False), device=device)
        mmds[i] = mmd2_unbiased(fa[pick_a], fb[pick_b])
    return {"kid": float(mmds.mean()), "kid_std": float(mmds.std()), "subsets": subsets, "subset_size": m}
