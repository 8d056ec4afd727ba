"""Inception Score math: logits whose score is known by hand, and agreement with torch-fidelity's IS code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from progan_cli.errors import DataError, UsageError
from progan_cli.metrics.inception_score import inception_score, inception_score_splits

CLASSES = 1008
BIG = 1e4  # a logit margin that makes the softmax exactly one-hot in float64


def one_hot_logits(labels: np.ndarray) -> np.ndarray:
    logits = np.zeros((len(labels), CLASSES))
    logits[np.arange(len(labels)), labels] = BIG
    return logits


def test_uniform_predictions_score_one():
    mean, std = inception_score(np.full((50, CLASSES), 3.7))
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 7, 1008])
def test_confident_predictions_spread_evenly_over_k_classes_score_k(k):
    # Every split sees each of the k classes equally often: p(y) uniform over k, KL = log k for each image.
    labels = np.tile(np.arange(k), 10)
    mean, std = inception_score(one_hot_logits(labels), splits=10)
    assert mean == pytest.approx(k, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_mixture_by_hand():
    # Each image is 50/50 between two classes; a split holds pairs (0,1) and (2,3) in equal numbers, so
    # p(y) = 1/4 on classes 0..3 and KL = 2 * 1/2 * log((1/2) / (1/4)) = log 2 for every image: IS = 2.
    logits = np.full((40, CLASSES), -BIG)
    logits[0::2, [0, 1]] = 0.0
    logits[1::2, [2, 3]] = 0.0
    assert inception_score(logits, splits=10) == pytest.approx((2.0, 0.0), abs=1e-12)


def test_splits_are_consecutive_and_scored_separately():
    # First half of the images all predict class 0 (IS 1 per split), second half spread over 4 classes
    # (IS 4 per split): two splits give 1 and 4, mean 2.5, population std 1.5.
    labels = np.concatenate([np.zeros(8, int), np.tile(np.arange(4), 2)])
    scores = inception_score_splits(one_hot_logits(labels), splits=2)
    np.testing.assert_allclose(scores, [1.0, 4.0], rtol=1e-12)
    assert inception_score(one_hot_logits(labels), splits=2) == pytest.approx((2.5, 1.5), rel=1e-12)


def test_soft_predictions_by_hand():
    # Two classes only (the rest at -BIG): image probabilities q and 1-q. With q = 0.9 and 0.1 alternating,
    # p(y) = (0.5, 0.5) and KL = 0.9 log 1.8 + 0.1 log 0.2 for each image.
    q = np.array([0.9, 0.1] * 5)
    logits = np.full((10, CLASSES), -BIG)
    logits[:, 0] = np.log(q)
    logits[:, 1] = np.log(1 - q)
    expected = math.exp(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    assert inception_score(logits, splits=5) == pytest.approx((expected, 0.0), rel=1e-12, abs=1e-12)


def test_agrees_with_torch_fidelity():
    torch_fidelity_isc = pytest.importorskip("torch_fidelity.metric_isc")
    rng = np.random.default_rng(0)
    # Peaked, uneven predictions like a classifier's, with a ragged last split (N not a multiple of 10).
    logits = rng.standard_normal((1003, CLASSES)) * 4 + rng.standard_normal(CLASSES) * 2
    # Both implementations widen float32 logits to float64 first, so a float32 tensor must agree as closely.
    for given in (torch.from_numpy(logits), torch.from_numpy(logits).float()):
        ref = torch_fidelity_isc.isc_features_to_metric(given, splits=10, shuffle=False)
        mean, std = inception_score(given, splits=10)
        assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-12)
        assert std == pytest.approx(ref["inception_score_std"], rel=1e-10)
    assert inception_score(logits) == inception_score(torch.from_numpy(logits))


def test_too_few_images_for_the_splits_is_a_data_error():
    with pytest.raises(DataError, match="at least 10 images"):
        inception_score(np.zeros((9, CLASSES)), splits=10)


def test_bad_arguments():
    with pytest.raises(UsageError, match="splits"):
        inception_score(np.zeros((10, CLASSES)), splits=0)
    with pytest.raises(DataError, match="shape"):
        inception_score(np.zeros(CLASSES))
    bad = np.zeros((10, CLASSES))
    bad[3, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        inception_score(bad)
