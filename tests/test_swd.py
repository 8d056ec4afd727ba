"""SWD held to a plain numpy/scipy implementation of the official steps fed the same random draws, plus the
properties a distance between image sets must have."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from progan_cli.errors import DataError, UsageError
from progan_cli.metrics import swd
from progan_cli.metrics.swd import SWDSampler, compute_swd, swd_resolutions

from conftest import ROOT, shared

sys.path.insert(0, str(ROOT / "benchmarks"))
from swd_numpy import numpy_swd  # noqa: E402  (the reference lives beside the benchmark that times it)


def reference(a: torch.Tensor, b: torch.Tensor, sampler: SWDSampler) -> dict[int, float]:
    """The numpy implementation, fed exactly the draws compute_swd makes with this sampler."""
    levels = swd_resolutions(a.shape[-1])
    return numpy_swd(
        a.numpy(),
        b.numpy(),
        {r: sampler.centres(0, r, len(a)).numpy() for r in levels},
        {r: sampler.centres(1, r, len(b)).numpy() for r in levels},
        {r: sampler.directions(r).numpy() for r in levels},
    )


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Image-like uint8 sets: coarse noise upsampled (structure at several scales) plus fine noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=gen) * 255, size=size,
                           mode="bilinear", align_corners=False)
    fine = torch.randn(n, 3, size, size, generator=gen) * 12
    return (coarse + fine).round().clamp(0, 255).to(torch.uint8)


def celeba_crops(n: int, start: int = 1) -> torch.Tensor:
    """n CelebA faces as 64x64 uint8 NCHW: the standard centre crop of celeba-half (cx 44.5, cy 60.5)."""
    folder = shared("celeba-half")
    crops = [np.asarray(Image.open(folder / f"{i:06d}.jpg").convert("RGB"))[29:93, 13:77]
             for i in range(start, start + n)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def assert_matches_reference(ours: dict, ref: dict[int, float]) -> None:
    assert list(ours["levels"]) == list(ref)
    for res, value in ref.items():
        assert ours["levels"][res] == pytest.approx(value, rel=1e-6), res
    assert ours["mean"] == pytest.approx(np.mean(list(ref.values())), rel=1e-6)


@pytest.mark.parametrize("n, size, seed", [(12, 64, 0), (6, 128, 5), (20, 16, 1)])
def test_matches_numpy_reference_on_synthetic_images(n, size, seed):
    a, b = smooth_images(n, size, seed), smooth_images(n, size, seed + 100)
    ours = compute_swd(a, b, seed=seed)
    assert ours["n"] == n and ours["seed"] == seed
    assert list(ours["levels"]) == swd_resolutions(size)
    assert_matches_reference(ours, reference(a, b, SWDSampler(seed)))


def test_matches_numpy_reference_on_celeba():
    faces = celeba_crops(32)
    a, b = faces[:16], faces[16:]
    assert_matches_reference(compute_swd(a, b, seed=7), reference(a, b, SWDSampler(7)))


def test_matches_reference_across_chunk_sizes(monkeypatch):
    # Tiny working sets force many image chunks and one-direction projection chunks: same numbers.
    a, b = smooth_images(9, 32, 2), smooth_images(9, 32, 3)
    monkeypatch.setattr(swd, "_IMAGE_CHUNK_BYTES", 2 * 3 * 32 * 32 * 4)
    monkeypatch.setattr(swd, "_PROJECTION_CHUNK_BYTES", 8 * 9 * 128)
    assert_matches_reference(compute_swd(a, b, seed=4), reference(a, b, SWDSampler(4)))


def test_channels_last_views_give_the_same_numbers():
    # Pyramid files and decoded folders are NHWC; a permuted view must work without a copy by the caller.
    a, b = smooth_images(6, 32, 0), smooth_images(6, 32, 1)
    view_a = a.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    view_b = b.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not view_a.is_contiguous()
    assert compute_swd(view_a, view_b, seed=1)["levels"] == pytest.approx(compute_swd(a, b, seed=1)["levels"],
                                                                           rel=1e-12)


def test_thread_count_changes_nothing_and_is_restored():
    # Several torch threads run chunks on a pool of Python threads; one thread runs them in line (as a GPU
    # does). Chunks differ, so the statistics' float64 sums differ in the last bits and a few descriptors
    # round the other way: the same numbers to float32 noise. The caller's thread count comes back.
    a, b = smooth_images(8, 32, 0), smooth_images(8, 32, 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pooled = compute_swd(a, b, seed=5)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        inline = compute_swd(a, b, seed=5)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for res, value in pooled["levels"].items():
        assert inline["levels"][res] == pytest.approx(value, rel=1e-7)


@dataclass(frozen=True)
class SharedCentres(SWDSampler):
    """Both sets sampled at the same neighbourhoods."""

    def centres(self, which: int, res: int, n: int) -> torch.Tensor:
        return super().centres(0, res, n)


@dataclass(frozen=True)
class PermutedCentres(SWDSampler):
    """Set a's centres reordered along with its images."""

    perm: tuple[int, ...] = ()

    def centres(self, which: int, res: int, n: int) -> torch.Tensor:
        centres = super().centres(which, res, n)
        return centres[list(self.perm)] if which == 0 else centres


def test_identical_sets_at_identical_neighbourhoods_are_zero():
    a = smooth_images(8, 64, 0)
    result = compute_swd(a, a.clone(), sampler=SharedCentres(seed=3))
    assert all(abs(v) < 1e-9 for v in result["levels"].values())


def test_the_distance_grows_with_the_difference():
    # The same neighbourhoods in a set and in noisier copies of it: more noise, further at the finest level
    # (where the noise lives) and on average.
    a = smooth_images(8, 32, 0)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(a.shape, generator=gen)
    results = [
        compute_swd(a, (a.float() + sigma * noise).round().clamp(0, 255).to(torch.uint8),
                    sampler=SharedCentres(seed=0))
        for sigma in (2, 8, 32)
    ]
    finest = [r["levels"][32] for r in results]
    means = [r["mean"] for r in results]
    assert 0 < finest[0] < finest[1] < finest[2]
    assert 0 < means[0] < means[1] < means[2]


def test_invariant_to_image_order():
    a, b = smooth_images(10, 32, 0), smooth_images(10, 32, 1)
    perm = tuple(torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist())
    base = compute_swd(a, b, seed=2)
    moved = compute_swd(a[list(perm)], b, sampler=PermutedCentres(seed=2, perm=perm))
    for res, value in base["levels"].items():
        assert moved["levels"][res] == pytest.approx(value, rel=1e-6)


def test_repeatable_with_a_seed_and_varies_without():
    a, b = smooth_images(6, 32, 0), smooth_images(6, 32, 1)
    assert compute_swd(a, b, seed=11) == compute_swd(a, b, seed=11)
    assert compute_swd(a, b, seed=11)["levels"] != compute_swd(a, b, seed=12)["levels"]


def test_negative_seed_is_a_usage_error():
    with pytest.raises(UsageError, match="--seed"):
        compute_swd(smooth_images(2, 16, 0), smooth_images(2, 16, 1), seed=-1)


def test_sampler_draws():
    sampler = SWDSampler(seed=0)
    centres = sampler.centres(0, 16, 50)
    assert centres.shape == (50, 128, 2)
    assert centres.min() == 3 and centres.max() == 12  # 7x7 neighbourhoods stay inside a 16x16 image
    assert not torch.equal(centres, sampler.centres(1, 16, 50))
    dirs = sampler.directions(32)
    assert dirs.shape == (4, 147, 128) and dirs.dtype == torch.float32
    assert (dirs.double().norm(dim=1) - 1).abs().max() < 1e-6


@pytest.mark.parametrize(
    "a, b, message",
    [
        (torch.zeros(4, 3, 32, 32), torch.zeros(4, 3, 32, 32), None),
        (torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(5, 3, 32, 32, dtype=torch.uint8),
         "same number of images"),
        (torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, 3, 64, 64, dtype=torch.uint8),
         "one size"),
        (torch.zeros(4, 3, 24, 24, dtype=torch.uint8), torch.zeros(4, 3, 24, 24, dtype=torch.uint8),
         "power of two"),
        (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
         "power of two"),
        (torch.zeros(4, 1, 32, 32, dtype=torch.uint8), torch.zeros(4, 1, 32, 32, dtype=torch.uint8), "RGB"),
    ],
)
def test_bad_inputs(a, b, message):
    if message is None:
        with pytest.raises(TypeError, match="uint8"):
            compute_swd(a, b)
    else:
        with pytest.raises(DataError, match=message):
            compute_swd(a, b)
