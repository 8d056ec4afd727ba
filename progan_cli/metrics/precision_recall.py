"""Improved precision and recall (Kynkaanniemi et al., *Improved Precision and Recall Metric for Assessing
Generative Models*, NeurIPS 2019): fidelity and diversity as two numbers where FID gives one.

Each set's manifold is the union of balls around its features, the radius of each ball being the distance to
that feature's k-th nearest neighbour in its own set (k = 3, the paper's choice; the feature itself, at
distance 0, is not counted). Precision is the share of generated features inside the real manifold (are the
samples realistic?), recall the share of real features inside the generated manifold (is the data covered?).
A point on a ball's boundary counts as inside (<=), as in the paper's code and stylegan2-ada's.

Features: the paper embeds images with VGG-16 (fc2, 4096-d). Those weights cannot be had offline here, so
progan uses the same pool3 features of the 2015-12-05 Inception network as FID and KID (one Inception pass
serves all three); the numbers are therefore not comparable with VGG-16 precision/recall in papers, only with
each other. torch-fidelity's precision/recall also defaults to Inception features.

Distances are computed in float64 as |x|^2 + |y|^2 - 2 x.y in row blocks, so memory is bounded by the block
(BLOCK_BYTES), not by the square of the set sizes; each generated-vs-real block serves precision and recall.
"""

from __future__ import annotations

import numpy as np
import torch

from progan_cli.errors import DataError, UsageError

NEIGHBOURS = 3
BLOCK_BYTES = 256 << 20


def _sq_distances(x: torch.Tensor, y: torch.Tensor, x_sq: torch.Tensor, y_sq: torch.Tensor) -> torch.Tensor:
    return (x_sq[:, None] + y_sq[None, :] - 2 * x @ y.T).clamp_min_(0)


def _rows(n_cols: int) -> int:
    """Rows per block so that a block of float64 distances stays within BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // (8 * max(n_cols, 1)))


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Squared distance of each row of x to its k-th nearest other row (its ball's radius, squared)."""
    sq = x.square().sum(dim=1)
    rows = _rows(len(x))
    # The k+1-th smallest: the row itself comes first at distance 0.
    return torch.cat([_sq_distances(x[i:i + rows], x, sq[i:i + rows], sq).kthvalue(k + 1, dim=1).values
                      for i in range(0, len(x), rows)])


def check_counts(n_real: int, n_fake: int, k: int = NEIGHBOURS) -> None:
    """UsageError/DataError unless both sets have more than k images (callers check before Inception)."""
    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    if min(n_real, n_fake) <= k:
        raise DataError(f"precision/recall with k={k} needs more than {k} images in each set, got {n_real} "
                        f"real and {n_fake} generated")


def compute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = NEIGHBOURS,
                             device: torch.device | str = "cpu") -> dict:
    """Precision and recall of generated features `fake` (N_f, d) against real features `real` (N_r, d).

    Returns {'precision', 'recall', 'k'}.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise DataError(f"precision/recall needs two feature sets of one dimension, got {real.shape} and {fake.shape}")
    check_counts(len(real), len(fake), k)
    r = torch.as_tensor(np.asarray(real), device=device).double()
    f = torch.as_tensor(np.asarray(fake), device=device).double()
    r_radii, f_radii = knn_radii(r, k), knn_radii(f, k)
    r_sq, f_sq = r.square().sum(dim=1), f.square().sum(dim=1)
    in_real = torch.zeros(len(f), dtype=torch.bool, device=device)  # precision: fake inside a real ball
    in_fake = torch.zeros(len(r), dtype=torch.bool, device=device)  # recall: real inside a fake ball
    rows = _rows(len(r))
    for i in range(0, len(f), rows):
        d = _sq_distances(f[i:i + rows], r, f_sq[i:i + rows], r_sq)
        in_real[i:i + rows] = (d <= r_radii[None, :]).any(dim=1)
        in_fake |= (d <= f_radii[i:i + rows, None]).any(dim=0)
    return {"precision": float(in_real.double().mean()), "recall": float(in_fake.double().mean()), "k": k}
