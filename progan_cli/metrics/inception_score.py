"""Inception Score from classifier logits (Salimans et al. 2016; the paper's CIFAR-10 numbers use it).

The math of openai/improved-gan's `inception_score.py`: softmax over the 1008 logits of the 2015-12-05
Inception classifier, the images cut into `splits` runs of consecutive images (boundaries i*N//splits), in
each run exp(mean over images of KL(p(y|x) || p(y))) with p(y) the run's mean prediction, then the mean and
the population std (ddof 0) of the per-split scores. Computed in float64 (the original used float32).
"""

from __future__ import annotations

import numpy as np
import torch

from progan_cli.errors import DataError, UsageError


def inception_score_splits(logits: np.ndarray | torch.Tensor, splits: int = 10) -> np.ndarray:
    """The per-split scores of logits (N, classes): (splits,) float64."""
    if splits < 1:
        raise UsageError(f"--splits must be at least 1, got {splits}")
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise DataError(f"Inception Score needs logits of shape (images, classes); got {logits.shape}")
    n = len(logits)
    if n < splits:
        raise DataError(
            f"Inception Score over {splits} splits needs at least {splits} images, got {n}; "
            "give more images or fewer splits (--splits)"
        )
    if not np.isfinite(logits).all():
        raise DataError("Inception Score: the classifier's logits contain NaN or infinity")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = np.empty(splits)
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        # A class that no image of the split gives any probability has p(y) = 0; its terms p log(p / p(y))
        # tend to 0 with p and add nothing (instead of 0 * inf = NaN).
        with np.errstate(divide="ignore", invalid="ignore"):
            log_py = np.log(p[part].mean(axis=0))
            terms = np.where(p[part] > 0, p[part] * (log_p[part] - log_py), 0.0)
        kl = terms.sum(axis=1)
        scores[i] = np.exp(kl.mean())
    return scores


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of the Inception Score of logits (N, 1008) over `splits` consecutive splits."""
    scores = inception_score_splits(logits, splits)
    return float(scores.mean()), float(scores.std())
