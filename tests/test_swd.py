"""SWD held to a plain numpy/scipy implementation of the official steps fed the same random draws, plus the
properties a distance between image sets must have."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from progan_cli.errors import DataError, UsageError
from progan_cli.metrics import swd
from progan_cli.metrics.swd import SWDSampler, compute_swd, compute_swd_batches, describe, swd_distance, swd_resolutions

from conftest import ROOT, shared
from reference.swd_numpy import numpy_swd


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


def test_batch_size_changes_nothing():
    # The draws are made for the whole set and the statistics are taken over the stored descriptors, so the
    # batches the images arrive in do not change a bit of the result (uneven last batches included).
    a, b = smooth_images(11, 32, 0), smooth_images(11, 32, 1)
    whole = compute_swd(a, b, seed=6)
    assert compute_swd(a, b, seed=6, batch_size=1) == whole
    assert compute_swd(a, b, seed=6, batch_size=4) == whole
    assert_matches_reference(whole, reference(a, b, SWDSampler(6)))


def test_streams_read_only_the_first_n_images():
    # A stream with more images than n is read up to n (the rest is never drawn); one with fewer is an error.
    a, b = smooth_images(10, 32, 0), smooth_images(10, 32, 1)
    read = []

    def stream(images: torch.Tensor, step: int):
        for start in range(0, len(images), step):
            read.append(start)
            yield images[start : start + step]

    got = compute_swd_batches(stream(a, 3), stream(b, 4), 7, seed=2)
    assert got == compute_swd(a[:7], b[:7], seed=2)
    assert read == [0, 3, 6, 0, 4]
    with pytest.raises(DataError, match="ran out after 10"):
        describe(stream(a, 4), 12, 0, SWDSampler(0))


def test_a_source_stopped_early_leaves_no_inference_mode_behind():
    # A generator source holds torch.inference_mode() open across its yields (as GeneratorSource does); SWD
    # stops it after n images. Training in the same thread afterwards needs autograd.
    images = smooth_images(6, 32, 0)

    def source():
        with torch.inference_mode():
            for start in range(0, 6, 2):
                yield images[start : start + 2]

    describe(source(), 4, 0, SWDSampler(0))
    gc.collect()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_described_sets_are_reusable():
    # The in-training metric describes the reals once and compares each generator's images against them.
    reals = smooth_images(6, 32, 0)
    sampler = SWDSampler(seed=3)
    kept = describe([reals], 6, 0, sampler)
    for seed in (1, 2):
        fakes = smooth_images(6, 32, seed)
        assert swd_distance(kept, describe([fakes], 6, 1, sampler)) == compute_swd(reals, fakes, seed=3)
    with pytest.raises(DataError, match="same number"):
        swd_distance(kept, describe([fakes], 5, 1, sampler))
    with pytest.raises(DataError, match="one size"):
        swd_distance(kept, describe([smooth_images(6, 64, 0)], 6, 1, sampler))


# Peak resident memory of one compute_swd_batches call, measured in a fresh process (Linux: the high-water mark
# is reset through /proc/self/clear_refs). glibc is told to map every large block on its own, so freed memory
# leaves the process and the high-water mark follows what is live. The working-set budgets are made small so
# that at both n every chunk is at its cap.
_PEAK_SCRIPT = """
import re, sys, torch
from progan_cli.metrics import swd

def rss_kb(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

swd._IMAGE_CHUNK_BYTES = swd._DESCRIPTOR_CHUNK_BYTES = swd._PROJECTION_CHUNK_BYTES = 256 << 10
torch.set_num_threads(1)
size, batch, *counts = map(int, sys.argv[1:])

def stream(n, seed):
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch):
        yield torch.randint(0, 256, (min(batch, n - start), 3, size, size), generator=gen, dtype=torch.uint8)

swd.compute_swd_batches(stream(2, 0), stream(2, 1), 2)  # warm up every code path
for n in counts:
    open("/proc/self/clear_refs", "w").write("5")
    before = rss_kb("VmRSS")
    swd.compute_swd_batches(stream(n, 0), stream(n, 1), n)
    print(n, (rss_kb("VmHWM") - before) * 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_peak_memory_beyond_the_descriptors_does_not_grow_with_n():
    # 512x512 images in batches of 4: a set of 40 is 31 MB of uint8 (the float pyramid of a set would be over
    # 160 MB), its descriptors 18 MB. From n = 8 to 40 the peak may grow by the descriptors of the 32 extra
    # image pairs (and their centres), not by the images.
    size, batch, small, large = 512, 4, 8, 40
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 << 10), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(size), str(batch), str(small), str(large)],
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode and "clear_refs" in out.stderr:
        pytest.skip(f"cannot reset the memory high-water mark here: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr
    peak = dict(map(int, line.split()) for line in out.stdout.splitlines())
    levels = len(swd_resolutions(size))
    per_pair = 2 * levels * 128 * (147 * 4 + 2 * 4)  # both sets' descriptors and int32 centres per level
    kept = (large - small) * per_pair
    growth = peak[large] - peak[small]
    assert 0.8 * kept < growth < kept + (6 << 20), (peak, kept)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu():
    # Same draws on every device; float32 sums in another order (and torch.sort instead of numpy's) move the
    # result only by float32 rounding. The descriptors never leave the GPU.
    a, b = smooth_images(24, 64, 0), smooth_images(24, 64, 1)
    cpu = compute_swd(a, b, seed=3)
    gpu = compute_swd(a.cuda(), b.cuda(), seed=3, batch_size=5)
    for res, value in cpu["levels"].items():
        assert gpu["levels"][res] == pytest.approx(value, rel=1e-4), res
    kept = describe([a.cuda()], 24, 0, SWDSampler(3), "cuda")
    assert kept.levels[64].device.type == "cuda"
