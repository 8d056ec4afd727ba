"""Sliced Wasserstein distance between two image sets: the paper's multi-scale statistical similarity.

Karras et al. 2018, section 5 (after Burt & Adelson's Laplacian pyramid and Rabin et al.'s sliced Wasserstein
distance), as the official `metrics/sliced_wasserstein.py` computes it: per Laplacian level from the full
resolution down to 16x16, 128 random 7x7 neighbourhoods per image (7x7x3 = 147 values each), normalised per
colour channel over each set, compared along 4 x 128 random unit directions by the mean absolute difference of
the sorted projections, reported x1e3 per level and averaged over levels.

Differences from the official code, none of which changes the protocol: the random choices come from torch
generators derived from `seed` (the official code draws from numpy's global state), so a seed makes the same
draws on every device and for any batch or chunk size; the pyramid is computed to the same bits as the official
scipy filtering, and the per-channel normalisation in float64 (the official float32 statistics drift, see
`_normalise`); a channel that is constant over a set keeps std 1 instead of turning the result into NaN.

Memory: like the official code, a set is read batch by batch (`describe`) and only its descriptors are kept
(128 x 147 float32 per image and level, ~75 KB), never the images or a float pyramid of the whole set: beyond
the descriptors, memory is bounded by the batch. At 1024x1024 the paper's 16,384 images per set make ~8.6 GB
of descriptors per set (the whole float pyramid of a set would be ~200 GB).

Speed (CPU): the projections are one float32 matmul per chunk of directions and the sorts run on numpy's
SIMD sort, row by row while the row sits in cache; both are the floor of the method's cost, and everything
else (pyramid, neighbourhood gather) is kept well below them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from progan_cli.devices import tf32
from progan_cli.errors import DataError, UsageError
from progan_cli.resolutions import is_resolution

# Working-set sizes on the CPU: a chunk of images whose float levels stay cache-sized, a chunk of descriptors
# normalised at once, and the projections of both sets for a chunk of directions (per worker). A GPU takes
# chunks _GPU_CHUNK_SCALE times larger, so that kernels stay big. Batches read from a source hold about
# _BATCH_BYTES of uint8 images.
_IMAGE_CHUNK_BYTES = 4 << 20
_DESCRIPTOR_CHUNK_BYTES = 4 << 20
_BATCH_BYTES = 48 << 20
_PROJECTION_CHUNK_BYTES = 128 << 20
_GPU_CHUNK_SCALE = 4

T = TypeVar("T")


@dataclass(frozen=True)
class SWDSampler:
    """The random choices of one SWD evaluation (paper defaults), each a pure function of (seed, what, level).

    Because each draw has its own generator stream, the draws do not depend on the device, on chunk sizes or
    on the order the levels are computed in, and a reference implementation can be fed the very same ones.
    """

    seed: int = 0
    nhoods_per_image: int = 128
    nhood_size: int = 7
    dir_repeats: int = 4
    dirs_per_repeat: int = 128

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed!r}")

    def _generator(self, *stream: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, *stream]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state) & (2**63 - 1))

    def centres(self, which: int, res: int, n: int) -> torch.Tensor:
        """(n, nhoods_per_image, 2) int64 neighbourhood centres as (y, x) for set `which` (0 = a, 1 = b).

        Uniform over the positions whose whole neighbourhood lies inside the image; x drawn before y, as the
        official code does.
        """
        r = self.nhood_size // 2
        gen = self._generator(0, which, res)
        x = torch.randint(r, res - r, (n, self.nhoods_per_image), generator=gen)
        y = torch.randint(r, res - r, (n, self.nhoods_per_image), generator=gen)
        return torch.stack([y, x], dim=-1)

    def directions(self, res: int, channels: int = 3) -> torch.Tensor:
        """(dir_repeats, channels*size*size, dirs_per_repeat) float32 unit directions for level `res`.

        Gaussian columns normalised in float64 and then cast, as the official code does.
        """
        dim = channels * self.nhood_size**2
        gen = self._generator(1, res)
        dirs = torch.randn(self.dir_repeats, dim, self.dirs_per_repeat, generator=gen, dtype=torch.float64)
        return (dirs / dirs.norm(dim=1, keepdim=True)).float()


def swd_resolutions(size: int) -> list[int]:
    """The levels SWD compares for images of side `size`: size, size/2, ..., 16."""
    resolutions = []
    while size >= 16:
        resolutions.append(size)
        size //= 2
    return resolutions


def swd_batch_size(res: int) -> int:
    """Images per batch to read for SWD at side `res`: about _BATCH_BYTES of uint8 input, 1..256 images."""
    return max(1, min(256, _BATCH_BYTES // (3 * res * res)))


@dataclass(frozen=True)
class SetDescriptors:
    """What SWD keeps of one image set: per level, (n*K, C*7*7) float32 neighbourhoods (K per image, in image
    order), each colour channel normalised over the set. Made by `describe`, compared by `swd_distance`."""

    levels: dict[int, torch.Tensor]
    n: int
    which: int
    sampler: SWDSampler

    @property
    def res(self) -> int:
        return next(iter(self.levels))


@torch.inference_mode()
@tf32(False)  # IEEE fp32 on CUDA too
def describe(
    batches: Iterable[torch.Tensor],
    n: int,
    which: int,
    sampler: SWDSampler,
    device: torch.device | str = "cpu",
) -> SetDescriptors:
    """The descriptors of the first `n` images of `batches` (uint8 NCHW RGB, any batch sizes), as set `which`
    (0 or 1: each set has its own neighbourhood centres).

    Reads batch by batch and stops after n images; each batch is moved to `device`, its whole Laplacian pyramid
    built in chunks and only the neighbourhoods kept. The result does not depend on how the images are batched.
    Runs in inference mode (a source may compute its batches in it, e.g. a generator), so the descriptors are
    inference tensors.
    """
    if n < 1:
        raise DataError(f"SWD needs at least one image per set, got {n}")
    device = torch.device(device)
    desc: dict[int, torch.Tensor] = {}
    centres: dict[int, torch.Tensor] = {}
    size = have = 0
    iterator = iter(batches)
    try:
        for batch in iterator:
            batch = batch[: n - have]
            _check_batch(batch, size)
            if not desc:
                size, k, dim = batch.shape[-1], sampler.nhoods_per_image, batch.shape[1] * sampler.nhood_size**2
                for res in swd_resolutions(size):
                    # int32 (~1 KB per image and level): the draw is for all n at once, so it does not depend
                    # on the batches; the gather's index arithmetic is int32 anyway.
                    centres[res] = sampler.centres(which, res, n).to(device=device, dtype=torch.int32)
                    desc[res] = torch.empty(n * k, dim, dtype=torch.float32, device=device)
            with _workers(device) as workers:
                _describe_batch(workers, batch.to(device), have, centres, desc, sampler.nhood_size)
            have += len(batch)
            if have == n:
                break
    finally:
        # A generator stopped early is finished here, inside this function's inference mode: a grad-mode
        # context it holds open across its yields would otherwise unwind later, wherever it is collected,
        # and set the caller's thread to the mode it saw here (inference).
        if hasattr(iterator, "close"):
            iterator.close()
    if have < n:
        raise DataError(f"SWD needs {n} images per set; the images ran out after {have}")
    with _workers(device) as workers:
        for level in desc.values():
            _normalise(workers, level, batch.shape[1])
    return SetDescriptors(desc, n, which, sampler)


@torch.inference_mode()
@tf32(False)
def swd_distance(a: SetDescriptors, b: SetDescriptors) -> dict:
    """SWD x1e3 between two described sets (same size, count and draws), on their device.

    Returns {"levels": {res: swd_x1e3}, "mean": average over levels, "n": images per set, "seed": seed}.
    """
    if a.res != b.res:
        raise DataError(f"SWD needs both sets at one size; got {a.res}x{a.res} and {b.res}x{b.res}")
    if a.n != b.n:
        raise DataError(f"SWD needs the same number of images in both sets; got {a.n} and {b.n}")
    if a.sampler != b.sampler:
        raise ValueError("swd_distance: the sets were described with different samplers")
    device = a.levels[a.res].device
    dist = {}
    with _workers(device) as workers:
        for res, desc_a in a.levels.items():
            channels = desc_a.shape[1] // a.sampler.nhood_size**2
            dirs = a.sampler.directions(res, channels).to(device)
            dist[res] = _sliced_wasserstein(workers, desc_a, b.levels[res].to(device), dirs) * 1e3
    return {"levels": dist, "mean": float(np.mean(list(dist.values()))), "n": a.n, "seed": a.sampler.seed}


def compute_swd_batches(
    a: Iterable[torch.Tensor],
    b: Iterable[torch.Tensor],
    n: int,
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
    sampler: SWDSampler | None = None,
) -> dict:
    """SWD x1e3 between the first `n` images of two streams of uint8 NCHW batches (see `describe`)."""
    sampler = sampler or SWDSampler(seed=seed)
    return swd_distance(describe(a, n, 0, sampler, device), describe(b, n, 1, sampler, device))


def compute_swd(
    a: torch.Tensor,
    b: torch.Tensor,
    seed: int = 0,
    *,
    sampler: SWDSampler | None = None,
    batch_size: int | None = None,
) -> dict:
    """SWD x1e3 between uint8 NCHW RGB image sets `a` and `b` of equal count and size (square, 2^k >= 16).

    Runs on the tensors' device, `batch_size` images at a time (default `swd_batch_size`). `sampler` overrides
    the paper's defaults or the draws (seed ignored then). Returns what `swd_distance` returns.
    """
    _check_sets(a, b)
    step = batch_size or swd_batch_size(a.shape[-1])
    return compute_swd_batches(
        (a[i : i + step] for i in range(0, len(a), step)),
        (b[i : i + step] for i in range(0, len(b), step)),
        len(a), seed, device=a.device, sampler=sampler,
    )


class _Workers:
    """Maps a function over independent chunks, in order; on the CPU over a pool of Python threads."""

    def __init__(self, pool: ThreadPoolExecutor | None, count: int, scale: int = 1):
        self.pool, self.count, self.scale = pool, count, scale

    def map(self, fn: Callable[[int], T], items: Sequence[int]) -> list[T]:
        if not self.pool:
            return [fn(i) for i in items]

        def run(i: int) -> T:
            with torch.inference_mode():  # as the caller (a thread does not inherit it): inference tensors
                return fn(i)

        return list(self.pool.map(run, items))

    def chunk(self, total: int, budget_bytes: int, item_bytes: int) -> int:
        """A chunk length within the byte budget that still gives every worker a share of `total` items."""
        return max(1, min(budget_bytes * self.scale // item_bytes, -(-total // self.count)))


@contextmanager
def _workers(device: torch.device) -> Iterator[_Workers]:
    """On the CPU, one Python thread per torch thread, each running whole chunks with torch single-threaded.

    Large independent chunks scale without torch's per-op OpenMP barriers, which cost more than they give
    when the cores are shared (3x slower measured here). torch and numpy release the GIL in their kernels.
    Results come back in chunk order, so sums over them are deterministic. The process-wide torch thread
    count is restored on exit (callers enter it per batch, so a source that computes its batches, such as a
    generator on the CPU, runs with the caller's threads).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield _Workers(None, 1, 1 if device.type == "cpu" else _GPU_CHUNK_SCALE)
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            yield _Workers(pool, threads)
    finally:
        torch.set_num_threads(threads)


def _check_sets(a: torch.Tensor, b: torch.Tensor) -> None:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.ndim != 4:
            raise TypeError(f"compute_swd: {name} must be a uint8 NCHW tensor")
    if a.shape[1] != 3 or b.shape[1] != 3:
        raise DataError(f"SWD compares RGB images; got {a.shape[1]} and {b.shape[1]} channels")
    if a.shape[2:] != b.shape[2:]:
        raise DataError(
            f"SWD needs both sets at one size; got {tuple(a.shape[2:])} and {tuple(b.shape[2:])}"
        )
    if len(a) != len(b) or len(a) == 0:
        raise DataError(f"SWD needs the same number of images in both sets; got {len(a)} and {len(b)}")
    _check_batch(a, 0)
    if a.device != b.device:
        raise TypeError(f"compute_swd: a is on {a.device}, b on {b.device}")


def _check_batch(batch: torch.Tensor, size: int) -> None:
    """A batch SWD can take: uint8 NCHW RGB, square, side a power of two >= 16 (and `size` once known)."""
    if not isinstance(batch, torch.Tensor) or batch.dtype != torch.uint8 or batch.ndim != 4:
        raise TypeError("SWD takes uint8 NCHW image batches")
    if batch.shape[1] != 3:
        raise DataError(f"SWD compares RGB images; got {batch.shape[1]} channels")
    h, w = batch.shape[2:]
    if h != w or not is_resolution(h, lo=16, hi=None):
        raise DataError(f"SWD needs square images whose side is a power of two >= 16; got {h}x{w}")
    if size and h != size:
        raise DataError(f"SWD needs every image of a set at one size; got {size}x{size} and {h}x{w}")


def _blur_down(x: torch.Tensor) -> torch.Tensor:
    """cv2.pyrDown: 5x5 binomial blur with mirror borders, every second pixel; separable and strided."""
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    return _down_1d(_down_1d(x, 2), 3).mul_(1 / 256)


def _down_1d(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Taps 1 4 6 4 1 (unnormalised) at every second position of `x`, already padded by 2 along `dim`."""
    n = x.shape[dim] - 4

    def tap(t: int) -> torch.Tensor:
        index = [slice(None)] * x.ndim
        index[dim] = slice(t, t + n, 2)
        return x[tuple(index)]

    y = tap(0) + tap(4)
    y.add_(tap(1) + tap(3), alpha=4)
    return y.add_(tap(2), alpha=6)


def _up(x: torch.Tensor) -> torch.Tensor:
    """cv2.pyrUp: zero insertion, then the binomial blur x4 with mirror borders."""
    return _up_1d(_up_1d(x, 2), 3).mul_(1 / 64)


def _up_1d(x: torch.Tensor, dim: int) -> torch.Tensor:
    """One axis of cv2.pyrUp in polyphase form, 8x too large (the caller scales once).

    Zero insertion then the 1D binomial x2 with mirror borders gives, at even outputs, (x[i-1] + 6x[i] +
    x[i+1]) / 8 and, at odd outputs, (x[i] + x[i+1]) / 2, where the mirror of the zero-inserted signal reads
    x[-1] = x[1] on the left and x[n] = x[n-1] on the right.
    """
    n = x.shape[dim]
    p = torch.cat([x.narrow(dim, 1, 1), x, x.narrow(dim, n - 1, 1)], dim=dim)  # p[i + 1] = x[i]
    out = x.new_empty(*x.shape[:dim], n, 2, *x.shape[dim + 1 :])
    even, odd = out.select(dim + 1, 0), out.select(dim + 1, 1)
    torch.add(p.narrow(dim, 0, n), p.narrow(dim, 2, n), out=even).add_(p.narrow(dim, 1, n), alpha=6)
    torch.add(p.narrow(dim, 1, n), p.narrow(dim, 2, n), out=odd).mul_(4)
    return out.flatten(dim, dim + 1)


def _describe_batch(
    workers: _Workers,
    batch: torch.Tensor,
    first: int,
    centres: dict[int, torch.Tensor],
    desc: dict[int, torch.Tensor],
    nhood_size: int,
) -> None:
    """Write the raw descriptors of `batch` (images first, first+1, ...) into `desc` at every level.

    Each Laplacian level is gauss - up(down(gauss)), or the gaussian itself at the last level, in float32
    0..255 units as the official code has them; the neighbourhoods at `centres` (n,K,2) as (y, x) are kept in
    the official ogrid component order: channel, then x offset, then y offset. Works in chunks of images whose
    whole pyramid is built, gathered and dropped, so nothing larger than a chunk's float copy is made.
    """
    m, c, size, _ = batch.shape
    device = batch.device
    k = next(iter(centres.values())).shape[1]
    last = min(desc)
    chunk = workers.chunk(m, _IMAGE_CHUNK_BYTES, c * size * size * 4)
    # Flat offsets within a chunk's level, in int32 (int64 index arithmetic is ~10x slower on the CPU; a chunk
    # holds far fewer than 2^31 values): offset[ch, i, j] = ch*res*res + (y offset j)*res + (x offset i).
    offs = torch.arange(-(nhood_size // 2), nhood_size // 2 + 1, device=device, dtype=torch.int32)
    channel = torch.arange(c, device=device, dtype=torch.int32).view(c, 1, 1)
    offsets = {res: (channel * res * res + offs.view(1, 1, -1) * res + offs.view(1, -1, 1)).flatten()
               for res in desc}

    def extract(start: int) -> None:
        g = batch[start : start + chunk]
        lo, hi = first + start, first + start + len(g)
        for res in desc:
            # From uint8 every tap sum of one down and up is exact in float32. Deeper levels carry up to 24
            # significant bits, so there the filters sum in float64 and round once to float32, as scipy's
            # convolve does in the official code: the levels come out bit-identical to it. g is a float copy of
            # the uint8 input or our own float32 level, free to overwrite once the down is taken.
            if g.dtype == torch.uint8:
                g = wide = g.float()
            else:
                wide = g.double()
            if res == last:
                level = g
            else:
                down = _blur_down(wide).float()
                level = g.sub_(_up(down.to(wide.dtype)).float())  # float32 - float32, as there
            img = torch.arange(len(g), device=device, dtype=torch.int32).view(-1, 1) * (c * res * res)
            base = img + centres[res][lo:hi, :, 0] * res + centres[res][lo:hi, :, 1]
            torch.index_select(level.reshape(-1), 0, (base.view(-1, 1) + offsets[res]).view(-1),
                               out=desc[res][lo * k : hi * k].view(-1))
            if res != last:
                g = down

    workers.map(extract, range(0, m, chunk))


def _normalise(workers: _Workers, desc: torch.Tensor, channels: int) -> None:
    """Normalise each colour channel of one level's descriptors (rows, C*7*7) over the set, in place."""
    rows = len(desc)
    chunk = workers.chunk(rows, _DESCRIPTOR_CHUNK_BYTES, desc.shape[1] * 4)

    def moments(start: int) -> torch.Tensor:
        """The chunk's per-channel count, mean and sum of squared deviations (M2), taken around a float32
        pivot at the mean: float32 speed without the cancellation of E[x^2] - mean^2 (at the gaussian level
        the mean dwarfs the spread)."""
        part = desc[start : start + chunk].view(-1, channels, desc.shape[1] // channels)
        count = part.shape[0] * part.shape[2]
        mean = part.sum(dim=2).sum(dim=0, dtype=torch.float64) / count
        pivot = mean.float()
        sq = (part - pivot.view(1, channels, 1)).square_().sum(dim=2).sum(dim=0, dtype=torch.float64)
        return torch.stack([torch.full_like(mean, count), mean, sq - count * (mean - pivot).square()])

    # Chunks combined exactly (Chan et al.): M2 = sum of M2_i + n_i (mean_i - mean)^2.
    counts, means, m2s = torch.stack(workers.map(moments, range(0, rows, chunk))).unbind(dim=1)
    mean = (counts * means).sum(dim=0) / counts.sum(dim=0)
    std = ((m2s + counts * (means - mean).square()).sum(dim=0) / counts.sum(dim=0)).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: keep it 0, not NaN

    def normalise(start: int) -> None:
        # In float64, rounded once: a mean or std rounded to float32 shifts or scales a whole set, and SWD
        # amplifies such a systematic error about a hundredfold (the official float32 statistics leave its
        # values uncertain from the fifth digit on).
        part = desc[start : start + chunk].view(-1, channels, desc.shape[1] // channels)
        part.copy_((part.double() - mean.view(1, channels, 1)) / std.view(1, channels, 1))

    workers.map(normalise, range(0, rows, chunk))


def _sliced_wasserstein(
    workers: _Workers, desc_a: torch.Tensor, desc_b: torch.Tensor, dirs: torch.Tensor
) -> float:
    """Mean |sorted(a . d) - sorted(b . d)| over all neighbourhoods and the unit directions `dirs` (R, D, P).

    All repeats hold the same number of directions, so the official mean over repeats of per-repeat means is
    the mean over all directions. Directions go in chunks so the projections stay within a fixed budget.
    """
    m = len(desc_a)
    cols = dirs.permute(0, 2, 1).reshape(-1, dirs.shape[1])  # (R*P, D) rows in repeat order
    chunk = workers.chunk(len(cols), _PROJECTION_CHUNK_BYTES, 8 * m)

    def gaps(start: int) -> float:
        d = cols[start : start + chunk]
        return _sorted_gap_sum(d @ desc_a.T, d @ desc_b.T)

    return sum(workers.map(gaps, range(0, len(cols), chunk))) / (m * len(cols))


def _sorted_gap_sum(proj_a: torch.Tensor, proj_b: torch.Tensor) -> float:
    """Sum over rows of sum |sort(row of a) - sort(row of b)|, in float64; the rows are overwritten.

    On the CPU numpy's SIMD quicksort (x86-simd-sort, numpy >= 2) runs several times faster than torch.sort;
    each row is sorted and compared while it sits in cache.
    """
    if proj_a.device.type != "cpu":
        gaps = torch.sort(proj_a, dim=1).values - torch.sort(proj_b, dim=1).values
        return float(gaps.abs_().sum(dtype=torch.float64))
    total = 0.0
    for row_a, row_b in zip(proj_a.numpy(), proj_b.numpy()):
        row_a.sort()
        row_b.sort()
        row_a -= row_b
        total += float(np.abs(row_a, out=row_a).sum(dtype=np.float64))
    return total
