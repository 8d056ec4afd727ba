"""The multi-resolution HDF5 pyramid: the one training-set format every later command reads.

Layout (documented for users in docs/formats.md; this module is the only code that knows it):

    /                      attrs: format="progan-pyramid", format_version, target, count, resolutions,
                           target_sha256 (of the target level's bytes, see Pyramid.target_sha256), ...
    /levels/<res>          uint8 (N, res, res, 3), RGB, NHWC; res = 4, 8, ..., target
    /meta/source           (N,) utf-8 path of the photo each image came from
    /meta/face_index       (N,) int32 rank of the face within its photo (0 = first kept)
    /meta/box              (N, 4) float32 detection x1, y1, x2, y2 in photo pixels (NaN without detection)
    /meta/landmarks        (N, 5, 2) float32 eyes, nose, mouth corners as (x, y) (NaN without detection)
    /meta/confidence       (N,) float32 detector score (NaN without detection)
    /meta/quad             (N, 4, 2) float32 corners of the crop in photo pixels
    /skipped/source, /skipped/reason   (M,) utf-8 photos that gave no image, and why

Each lower level is the 2x2 box average of the level above, kept in float32 and rounded once per level,
as the official `dataset_tool.py` (progressive_growing_of_gans) does.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from progan_cli.errors import DataError
from progan_cli.files import atomic_write
from progan_cli.resolutions import is_resolution

PYRAMID_SUFFIXES = (".h5", ".hdf5")  # what progan prep writes and metric commands read as a pyramid

FORMAT = "progan-pyramid"
FORMAT_VERSION = 1
# Levels at or above this resolution are chunked one image per chunk for fast random reads; smaller levels
# are read whole (a 64x64 level of 200k CelebA faces is 2.4 GB, a 32x32 level 600 MB).
_SINGLE_IMAGE_CHUNK_RES = 64
_SMALL_CHUNK_BYTES = 1 << 16


def resolutions_up_to(target: int) -> list[int]:
    """4, 8, ..., target; target must be a power of two between 4 and 1024."""
    if not is_resolution(target):
        raise DataError(f"target {target} is not a power of two between 4 and 1024")
    return [2**k for k in range(2, target.bit_length())]


def build_levels(images: np.ndarray) -> dict[int, np.ndarray]:
    """All pyramid levels of uint8 images (N, T, T, 3): the official dataset tool's float box-average chain."""
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
        raise DataError(f"expected images of shape (N, T, T, 3), got {images.shape}")
    target = images.shape[1]
    levels = {target: np.ascontiguousarray(images, dtype=np.uint8)}
    x = images.astype(np.float32)
    for res in reversed(resolutions_up_to(target)[:-1]):
        x = (x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) * 0.25
        levels[res] = np.rint(x).clip(0, 255).astype(np.uint8)
    return dict(sorted(levels.items()))


@dataclass
class FaceMeta:
    """Where one pyramid image came from; NaN fields where there was no detection (centre crops)."""

    source: str
    face_index: int = 0
    box: np.ndarray = field(default_factory=lambda: np.full(4, np.nan, np.float32))
    landmarks: np.ndarray = field(default_factory=lambda: np.full((5, 2), np.nan, np.float32))
    confidence: float = float("nan")
    quad: np.ndarray = field(default_factory=lambda: np.full((4, 2), np.nan, np.float32))


def _chunks(res: int) -> tuple[int, int, int, int]:
    if res >= _SINGLE_IMAGE_CHUNK_RES:
        return (1, res, res, 3)
    return (max(1, _SMALL_CHUNK_BYTES // (res * res * 3)), res, res, 3)


class PyramidWriter:
    """Appends images (at the target size) with their metadata to a new pyramid file.

    Write to a temporary path and rename it when complete (see `write_pyramid` and `progan prep`): a file
    named like a pyramid is always a finished one.
    """

    def __init__(self, path: Path, target: int, compression: str | None = None, **attrs: Any) -> None:
        import h5py

        self.path = Path(path)
        self.target = target
        self.resolutions = resolutions_up_to(target)
        self._f = h5py.File(self.path, "w", track_order=True)
        self._str = h5py.string_dtype()
        opts: dict[str, Any] = {"compression": compression} if compression else {}
        if compression == "gzip":
            opts["compression_opts"] = 4
        for res in self.resolutions:
            self._f.create_dataset(
                f"levels/{res}", shape=(0, res, res, 3), maxshape=(None, res, res, 3), dtype=np.uint8,
                chunks=_chunks(res), track_times=False, **opts,
            )
        meta = {"source": ((), self._str), "face_index": ((), np.int32), "box": ((4,), np.float32),
                "landmarks": ((5, 2), np.float32), "confidence": ((), np.float32), "quad": ((4, 2), np.float32)}
        for name, (shape, dtype) in meta.items():
            self._f.create_dataset(f"meta/{name}", shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                   chunks=(1024, *shape), track_times=False)
        for name in ("source", "reason"):
            self._f.create_dataset(f"skipped/{name}", shape=(0,), maxshape=(None,), dtype=self._str,
                                   chunks=(1024,), track_times=False)
        self.count = 0
        self._digest = hashlib.sha256()  # of the target level, as it is appended: no second pass over the file
        self.set_attrs(format=FORMAT, format_version=FORMAT_VERSION, target=target,
                       resolutions=self.resolutions, count=0, target_sha256=self._digest.hexdigest(), **attrs)

    def set_attrs(self, **attrs: Any) -> None:
        """File attributes; dicts and lists that HDF5 cannot hold natively are stored as JSON text."""
        for key, value in attrs.items():
            if isinstance(value, dict) or (isinstance(value, (list, tuple)) and value and
                                           not all(isinstance(v, (int, float)) for v in value)):
                value = json.dumps(value, sort_keys=True)
            self._f.attrs[key] = "" if value is None else value

    def append(self, images: np.ndarray, meta: list[FaceMeta]) -> None:
        """Add uint8 images (N, T, T, 3) and one FaceMeta each."""
        if len(images) != len(meta):
            raise ValueError("one FaceMeta per image")
        if len(images) == 0:
            return
        if images.shape[1:] != (self.target, self.target, 3):
            raise ValueError(f"images must be {self.target}x{self.target} RGB, got {images.shape}")
        n0, n1 = self.count, self.count + len(images)
        for res, level in build_levels(images).items():
            ds = self._f[f"levels/{res}"]
            ds.resize(n1, axis=0)
            ds[n0:n1] = level
        self._digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
        columns = {
            "source": [m.source for m in meta],
            "face_index": np.array([m.face_index for m in meta], np.int32),
            "box": np.stack([m.box for m in meta]).astype(np.float32),
            "landmarks": np.stack([m.landmarks for m in meta]).astype(np.float32),
            "confidence": np.array([m.confidence for m in meta], np.float32),
            "quad": np.stack([m.quad for m in meta]).astype(np.float32),
        }
        for name, values in columns.items():
            ds = self._f[f"meta/{name}"]
            ds.resize(n1, axis=0)
            ds[n0:n1] = values
        self.count = n1
        self._f.attrs["count"] = n1
        self._f.attrs["target_sha256"] = self._digest.hexdigest()

    def skip(self, sources: list[str], reasons: list[str]) -> None:
        """Record photos that gave no image (unreadable, no face, ...)."""
        if not sources:
            return
        for name, values in (("source", sources), ("reason", reasons)):
            ds = self._f[f"skipped/{name}"]
            n0 = ds.shape[0]
            ds.resize(n0 + len(values), axis=0)
            ds[n0:] = values

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> PyramidWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_pyramid(path: Path, images: np.ndarray, meta: list[FaceMeta] | None = None, **attrs: Any) -> Path:
    """Write uint8 images (N, T, T, 3) as a complete pyramid at `path`, atomically."""
    path = Path(path)
    images = np.asarray(images)
    if images.ndim != 4:
        raise DataError(f"expected images of shape (N, T, T, 3), got {images.shape}")
    meta = meta if meta is not None else [FaceMeta(source=f"array[{i}]") for i in range(len(images))]
    with atomic_write(path) as tmp, PyramidWriter(tmp, images.shape[1], **attrs) as writer:
        writer.append(images, meta)
    return path


@functools.lru_cache(maxsize=16)
def _level_sha256(path: str, res: int, size: int, mtime_ns: int) -> str:
    """sha256 of one level read in chunks; memoised per file version (size and mtime are part of the key)."""
    import h5py

    digest = hashlib.sha256()
    with h5py.File(path, "r") as f:
        level = f[f"levels/{res}"]
        step = max(1, (64 << 20) // max(1, res * res * 3))
        for start in range(0, level.shape[0], step):
            digest.update(np.ascontiguousarray(level[start:start + step]).tobytes())
    return digest.hexdigest()


class Pyramid:
    """Read access to a pyramid file; raises DataError with a way out for anything that is not one."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = Path(path)
        if self.path.is_dir():
            raise DataError(f"{self.path} is a folder, not a pyramid file (make one with `progan prep PHOTOS/`)")
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file (make a pyramid with `progan prep PHOTOS/`)")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not an HDF5 file ({exc.__class__.__name__}); "
                            "make a pyramid with `progan prep PHOTOS/`") from None
        if self._f.attrs.get("format") != FORMAT:
            self._f.close()
            raise DataError(f"{self.path}: HDF5 file but not a progan pyramid; make one with `progan prep`")
        version = int(self._f.attrs["format_version"])
        if version > FORMAT_VERSION:
            self._f.close()
            raise DataError(f"{self.path}: pyramid format {version} is newer than this progan "
                            f"(reads {FORMAT_VERSION}); upgrade progan")
        self.target = int(self._f.attrs["target"])
        self.resolutions = sorted(int(r) for r in self._f["levels"])

    def __len__(self) -> int:
        return int(self._f.attrs["count"])

    @property
    def attrs(self) -> dict[str, Any]:
        """File attributes as Python values (JSON text decoded back into dicts/lists)."""
        out: dict[str, Any] = {}
        for key, value in self._f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, str) and value[:1] in "{[":
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            elif isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            out[key] = value
        return out

    @property
    def target_sha256(self) -> str:
        """sha256 of the target level's bytes ((N, T, T, 3) uint8 in file order): it names the images of every
        level, since the lower ones are computed from it. `progan prep` stores it while writing, so reading it
        costs nothing; for a file written before that it is computed once per process (a full read)."""
        stored = self._f.attrs.get("target_sha256")
        if stored:
            return stored.decode() if isinstance(stored, bytes) else str(stored)
        stat = self.path.stat()
        return _level_sha256(str(self.path.resolve()), self.target, stat.st_size, stat.st_mtime_ns)

    def level(self, res: int):
        """The h5py dataset of one level (lazy), DataError if the file lacks it."""
        if res not in self.resolutions:
            have = ", ".join(map(str, self.resolutions))
            if not is_resolution(res):
                fix = "levels are powers of two; pick one of those"
            elif res > self.target:
                fix = f"re-run `progan prep` with --target {res} for it"
            else:
                fix = "the file is incomplete; re-run `progan prep` to write it again"
            raise DataError(f"{self.path} has no {res}x{res} level (it has {have}); {fix}")
        return self._f[f"levels/{res}"]

    def images(self, res: int) -> np.ndarray:
        """A whole level as uint8 (N, res, res, 3) in memory."""
        return self.level(res)[()]

    def image(self, res: int, index: int) -> np.ndarray:
        """One image, uint8 (res, res, 3)."""
        return self.level(res)[index]

    def meta(self, name: str) -> np.ndarray:
        """One metadata column (see the module docstring); sources decoded to str."""
        values = self._f[f"meta/{name}"][()]
        return np.array([v.decode() for v in values], dtype=object) if values.dtype == object else values

    def skipped(self) -> Iterator[tuple[str, str]]:
        """(source, reason) of every photo that gave no image."""
        sources, reasons = self._f["skipped/source"][()], self._f["skipped/reason"][()]
        for s, r in zip(sources, reasons):
            yield s.decode(), r.decode()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Pyramid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
