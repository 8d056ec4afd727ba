"""Improved precision and recall: hand-made cases, and equality with a plain numpy transcription of
Kynkaanniemi et al. 2019 (k = 3) on synthetic and on real Inception features; torch-fidelity's as a second
reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from progan_cli.errors import DataError
from progan_cli.metrics import precision_recall
from progan_cli.metrics.precision_recall import compute_precision_recall


def _numpy_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """The paper's definition, written out: full distance matrices from coordinate differences; each sample's
    radius is the distance to its k-th nearest neighbour in its own set (itself excluded); a sample counts when
    it lies within (<=) the radius of any sample of the other set."""
    def dist(x, y):
        return np.sqrt(((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(axis=2))

    r_radius = np.sort(dist(real, real), axis=1)[:, k]  # column 0 is the sample itself
    f_radius = np.sort(dist(fake, fake), axis=1)[:, k]
    d = dist(fake, real)  # (fake, real)
    precision = np.mean([(d[i] <= r_radius).any() for i in range(len(fake))])
    recall = np.mean([(d[:, j] <= f_radius).any() for j in range(len(real))])
    return float(precision), float(recall)


def test_hand_made_points():
    # Reals 0, 1, ..., 9 on a line: the 3rd nearest neighbour is 2 away (3 away at both ends, 2 at 1 and 8).
    # Fakes 5.5 (inside), 20 (far from everything), 11.9 (within 3 of the real at 9), 13 (outside).
    real = np.arange(10, dtype=np.float64)[:, None]
    fake = np.array([[5.5], [20.0], [11.9], [13.0]])
    out = compute_precision_recall(real, fake, k=3)
    assert out["precision"] == pytest.approx(2 / 4)
    # Fake radii (3rd neighbour among fakes): 5.5 -> 14.5, 20 -> 14.5, 11.9 -> 8.1, 13 -> 7: the ball of 5.5
    # covers every real in [-9, 20]: recall 1.
    assert out["recall"] == pytest.approx(1.0)
    assert (out["precision"], out["recall"]) == pytest.approx(_numpy_precision_recall(real, fake))


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_numpy_transcription_on_synthetic_features(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(300, 16))
    fake = np.concatenate([rng.normal(size=(150, 16)) * 0.6, rng.normal(2.5, 1.0, size=(90, 16))])  # part off
    want = _numpy_precision_recall(real, fake)
    assert 0 < want[0] < 1 and 0 < want[1] < 1  # a case where both numbers mean something
    out = compute_precision_recall(real, fake)
    assert (out["precision"], out["recall"]) == want
    # Blocks of a few rows (memory bounded by the block, not by n^2) give the same counts.
    monkeypatch.setattr(precision_recall, "BLOCK_BYTES", 8 * 300 * 7)
    out = compute_precision_recall(real.astype(np.float32), fake.astype(np.float32))
    assert (out["precision"], out["recall"]) == _numpy_precision_recall(real.astype(np.float32),
                                                                        fake.astype(np.float32))


def test_too_few_images():
    with pytest.raises(DataError, match="more than 3 images"):
        compute_precision_recall(np.zeros((3, 4)), np.zeros((10, 4)))


@pytest.mark.slow
def test_equals_numpy_transcription_and_torch_fidelity_on_celeba_pool3(celeba_pool3):
    real, fake = celeba_pool3
    out = compute_precision_recall(real, fake)
    assert (out["precision"], out["recall"]) == _numpy_precision_recall(real, fake)
    metric_prc = pytest.importorskip("torch_fidelity.metric_prc")
    ref = metric_prc.prc_features_to_metric(torch.from_numpy(fake).double(), torch.from_numpy(real).double(),
                                            prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False,
                                            verbose=False)
    assert (out["precision"], out["recall"]) == pytest.approx((ref["precision"], ref["recall"]), abs=1e-12)
