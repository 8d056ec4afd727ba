"""What a metric can read: a folder of images, a pyramid level, a run or checkpoint's EMA generator, or stored
FID statistics. Every image source yields uint8 NCHW RGB batches in a fixed order (sorted files, file order,
seeded latents), so IS splits and SWD subsets are repeatable.
"""

from __future__ import annotations

import copy
import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from progan_cli.data.faces import IMAGE_SUFFIXES
from progan_cli.data.pyramid import PYRAMID_SUFFIXES
from progan_cli.errors import DataError, UsageError
from progan_cli.prefetch import prefetch_batches
from progan_cli.pretrained import locate
from progan_cli.formats import EXPORT_SUFFIX
from progan_cli.sampling import generate, load_generator, rebatch

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt")
GENERATOR_SUFFIXES = (*CHECKPOINT_SUFFIXES, EXPORT_SUFFIX)  # what opens as a GeneratorSource
STATS_SUFFIX = ".npz"
DECODE_THREADS = 4  # PIL releases the GIL while decoding: threads overlap JPEG decoding with Inception


class ImageSource:
    """Base of the sources that hold images. `label` names it in messages; `count` images of `res`x`res`."""

    label: str
    count: int
    res: int

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """uint8 (B, 3, res, res) batches, in order, covering all `count` images."""
        raise NotImplementedError

    def content_key(self) -> str | None:
        """A hash of the images themselves (cache key), or None when they are not stored anywhere."""
        return None

    def first(self, n: int) -> ImageSource:
        """The first `n` images only (`--n-reals`), with a cache key of their own."""
        return self if n >= self.count else _FirstImages(self, n)

    def images(self, batch_size: int = 256, n: int | None = None) -> torch.Tensor:
        """The first `n` images (all by default) as one uint8 NCHW tensor (SWD needs them together);
        reading stops there, so a large set is never loaded whole for a smaller n."""
        want = self.count if n is None else min(n, self.count)
        taken: list[torch.Tensor] = []
        have = 0
        for batch in self.batches(min(batch_size, max(want, 1))):
            taken.append(batch[: want - have].cpu())
            have += len(taken[-1])
            if have >= want:
                break
        return torch.cat(taken)


class FolderSource(ImageSource):
    """Every image file (IMAGE_SUFFIXES) under a folder, recursively, sorted by relative path (as pytorch-fid)."""

    def __init__(self, folder: Path):
        from PIL import Image, UnidentifiedImageError

        self.label = str(folder)
        self.files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"{folder}: no images found (looked recursively for {', '.join(sorted(IMAGE_SUFFIXES))})")
        sizes: dict[tuple[int, int], Path] = {}
        for path in self.files:  # headers only: finds unreadable files and mixed sizes before any real work
            try:
                with Image.open(path) as im:
                    sizes.setdefault(im.size, path)
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{path}: cannot read this image ({exc.__class__.__name__}); remove or replace "
                                f"it") from None
        if len(sizes) > 1:
            (s1, p1), (s2, p2) = list(sizes.items())[:2]
            raise DataError(f"{folder}: images differ in size ({p1.name} is {s1[0]}x{s1[1]}, {p2.name} is "
                            f"{s2[0]}x{s2[1]}); metrics need one size, e.g. a pyramid level")
        (width, height), = sizes
        if width != height:
            raise DataError(f"{folder}: images are {width}x{height}; metrics here take square images")
        self.res, self.count = width, len(self.files)
        self._root = folder

    def _decode(self, path: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as exc:  # truncated data shows only when decoding
            raise DataError(f"{path}: cannot decode this image ({exc}); remove or replace it") from None

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for chunk in prefetch_batches(self._decode, self.files, batch_size, DECODE_THREADS):
            yield torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2)

    def first(self, n: int) -> FolderSource:
        """The first `n` files in sorted order: only those are read, hashed included."""
        if n >= self.count:
            return self
        capped = copy.copy(self)
        capped.files, capped.count = self.files[:n], n
        capped.label = f"{self.label} (first {n})"
        return capped

    def content_key(self) -> str:
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.relative_to(self._root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
        return "folder:" + digest.hexdigest()


class PyramidSource(ImageSource):
    """One level of a pyramid file (`--res`, default its target), read in chunks."""

    def __init__(self, path: Path, res: int | None):
        from progan_cli.data.pyramid import Pyramid

        with Pyramid(path) as pyramid:
            self.res = res if res is not None else pyramid.target
            self.count = int(pyramid.level(self.res).shape[0])
        self.path, self.label = path, f"{path} at {self.res}x{self.res}"
        if self.count == 0:
            raise DataError(f"{path}: the pyramid holds no images")

    def _chunks(self, batch_size: int) -> Iterator[np.ndarray]:
        from progan_cli.data.pyramid import Pyramid

        with Pyramid(self.path) as pyramid:
            level = pyramid.level(self.res)
            for start in range(0, self.count, batch_size):
                yield level[start:start + batch_size]

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for chunk in self._chunks(batch_size):
            yield torch.from_numpy(chunk).permute(0, 3, 1, 2)

    def content_key(self) -> str:
        """The sha256 of the target level that `progan prep` stored (every level is computed from it), and
        the level: a cache hit reads no image."""
        from progan_cli.data.pyramid import Pyramid

        with Pyramid(self.path) as pyramid:
            return f"pyramid:{pyramid.target_sha256}:{self.res}"


class _FirstImages(ImageSource):
    """The first `n` images of a stored source (ImageSource.first)."""

    def __init__(self, source: ImageSource, n: int):
        self.source, self.res, self.count = source, source.res, n
        self.label = f"{source.label} (first {n})"

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        left = self.count
        for batch in self.source.batches(min(batch_size, self.count)):
            yield batch[:left]
            left -= len(batch[:left])
            if left == 0:
                return

    def content_key(self) -> str | None:
        key = self.source.content_key()
        return f"{key}:first{self.count}" if key is not None else None


class GeneratorSource(ImageSource):
    """`n` images from a generator, made on the fly (no PNG round trip): images 0..n-1 of set `seed` as
    `progan sample --n N --seed S` makes them (progan_cli.sampling: the same latents, the same fixed forward
    batches), so the first k images of any n are the same and the consumer's batch size changes nothing.
    """

    def __init__(self, G: torch.nn.Module, res: int, n: int, device: torch.device | str, seed: int = 0,
                 label: str = "generator", alpha: float = 1.0):
        if n <= 0:
            raise UsageError(f"--n must be positive to generate images from {label}, got {n}")
        self.G, self.res, self.count, self.seed, self.device, self.alpha = G, res, n, seed, device, alpha
        self.label = f"{label} ({n} generated at {res}x{res})"

    @classmethod
    def from_checkpoint(cls, path: Path, n: int, device: torch.device | str, seed: int = 0,
                        res: int | None = None) -> GeneratorSource:
        """The EMA generator of any network file progan reads, at `res` (default: its resolution)."""
        gen = load_generator(path, device)
        res = gen.check_res(res)
        return cls(gen.net, res, n, device, seed, str(path), gen.alpha(res))

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        images = generate(self.G, self.seed, range(self.count), self.res, alpha=self.alpha, device=self.device)
        yield from rebatch(images, batch_size)


@dataclass
class StatsSource:
    """FID statistics stored as pytorch-fid writes them (`mu`, `sigma`), plus what we record when we save."""

    label: str
    mu: np.ndarray
    sigma: np.ndarray
    count: int | None
    protocol: str | None
    weights: str | None
    res: int | None = None  # size of the images they came from, when recorded


def load_stats(path: Path) -> StatsSource:
    """pytorch-fid's `mu` and `sigma` (plus what `--save-stats` records); anything else is one DataError line."""
    arrays = _read_npz(path)
    for key in ("mu", "sigma"):
        if key not in arrays:
            raise DataError(f"{path}: FID statistics need arrays 'mu' and 'sigma' (found "
                            f"{', '.join(arrays) or 'none'})")
        if arrays[key].dtype.kind not in "fiu":
            raise DataError(f"{path}: '{key}' holds {arrays[key].dtype} values, not numbers")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not a mean and its covariance")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"{path}: mu or sigma holds NaN or infinite values")

    def scalar(key: str, kind: type) -> int | str | None:
        value = arrays.get(key)
        if value is None or value.ndim != 0 or (kind is int and value.dtype.kind not in "iu"):
            return None
        return kind(value)

    return StatsSource(str(path), mu, sigma, scalar("n", int), scalar("protocol", str), scalar("weights", str),
                       scalar("res", int))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz, loading no pickled object; one line saying what the file is otherwise."""
    fix = "statistics come from `progan fid DATA --save-stats FILE.npz` or pytorch-fid's --save-stats"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            npy = f.read(6) == b"\x93NUMPY"
        what = "a single .npy array" if npy else "not an .npz archive"
        raise DataError(f"{path}: {what}, not FID statistics; {fix}")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files if k + ".npy" in f.zip.namelist()}
    except ValueError:  # numpy's refusal of object arrays, which would run pickled code
        raise DataError(f"{path}: holds pickled Python objects, which progan does not load; {fix}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: a damaged .npz archive ({exc.__class__.__name__}); {fix}") from None


def _is_run(folder: Path) -> bool:
    """A training run folder (config.json, checkpoints/) or a folder of checkpoint files; image folders have none."""
    return ((folder / "config.json").is_file() or (folder / "checkpoints").is_dir()
            or any(p.suffix in CHECKPOINT_SUFFIXES for p in folder.iterdir()))


def open_source(path: Path, res: int | None = None, n: int | None = None, device: torch.device | str = "cpu",
                seed: int = 0) -> ImageSource | StatsSource:
    """Pick the source from what `path` is: .npz stats, .h5 pyramid (+res), a generator file (+n, and
    +res to render below its resolution), folder."""
    path = locate(path)  # a published network's name stands for its file in the cache
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() == STATS_SUFFIX:
        return load_stats(path)
    if path.is_file() and path.suffix.lower() in PYRAMID_SUFFIXES:
        return PyramidSource(path, res)
    if (path.is_file() and path.suffix.lower() in GENERATOR_SUFFIXES) or (path.is_dir() and _is_run(path)):
        if n is None:
            raise UsageError(f"{path} is a generator (a run, checkpoint, export or published network): say how many "
                             "images to generate with --n")
        return GeneratorSource.from_checkpoint(path, n, device, seed, res)
    if path.is_dir():
        return FolderSource(path)
    raise DataError(f"{path}: not a folder of images, a pyramid (.h5), a run, checkpoint or export "
                    f"({EXPORT_SUFFIX}), or FID stats (.npz)")


def open_sources(paths: list[Path], res: int | None = None, n: int | None = None,
                 device: torch.device | str = "cpu", seed: int = 0) -> list[ImageSource | StatsSource]:
    """open_source for each path; without --res a pyramid follows a generator's resolution, so that
    `progan swd data.h5 run/` compares like with like."""
    sources = [open_source(p, res, n, device, seed) for p in paths]
    made = [s.res for s in sources if isinstance(s, GeneratorSource)]
    if res is None and made:
        sources = [PyramidSource(s.path, made[0]) if isinstance(s, PyramidSource) else s for s in sources]
    return sources
