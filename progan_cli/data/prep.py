"""`progan prep`: photos -> detected, cropped faces -> one pyramid file, resumable after any interruption.

Photos are processed in fixed batches, in sorted order. Each finished batch is saved atomically as a
shard under `<out>.parts/`; once all shards exist they are assembled into `<out>.partial`, which is renamed
to `<out>`. A run that is killed at any point and started again with the same command reuses the shards,
so the result is exactly what an uninterrupted run writes, with no duplicates.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from progan_cli import __version__
from progan_cli.data.faces import (
    CROPS, IMAGE_SUFFIXES, UnreadableImage, align_quad, box_quad, center_quad, crop_quad, load_rgb)
from progan_cli.data.pyramid import FaceMeta, PyramidWriter
from progan_cli.errors import DataError, UsageError
from progan_cli.files import atomic_write
from progan_cli.prefetch import prefetch_batches

# Detection runs on a copy whose long side is at most this; faces are cropped from the full photo.
# A 20 px face at this size is ~90 px in a 4600 px photo: smaller faces would be upscaled for any target
# above 64, so little is lost, and MTCNN on a 14 MP photo would take seconds.
MAX_DETECT_SIDE = 1024


@dataclass(frozen=True)
class PrepOptions:
    """Everything that decides the content of the output file (and so must match on resume)."""

    target: int = 128
    crop: str = "align"
    faces: str = "largest"
    min_face: int = 20
    min_confidence: float = 0.8
    margin: float = 0.25
    batch: int = 32
    compression: str | None = None

    def validate(self) -> None:
        if self.target < 4 or self.target > 1024 or self.target & (self.target - 1):
            raise UsageError(f"--target must be a power of two from 4 to 1024, not {self.target}")
        if self.crop not in CROPS:
            raise UsageError(f"--crop must be one of {', '.join(CROPS)}, not {self.crop!r}")
        if self.faces not in ("largest", "all"):
            raise UsageError(f"--faces must be 'largest' or 'all', not {self.faces!r}")
        if self.min_face < 12:
            raise UsageError("--min-face must be at least 12 (MTCNN's smallest window)")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise UsageError("--min-confidence must be between 0 and 1")
        if self.margin < 0:
            raise UsageError("--margin must be >= 0")
        if self.batch < 1:
            raise UsageError("--batch must be >= 1")
        if self.compression not in (None, "gzip", "lzf"):
            raise UsageError("--compression must be gzip or lzf")


@dataclass
class PrepSummary:
    """What a prep run did; printed at the end and stored in the file's attributes."""

    out: str
    sources: int
    images: int
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_batches: int = 0

    @property
    def photos_per_second(self) -> float:
        return self.sources / self.seconds if self.seconds > 0 else 0.0


def list_sources(src: str | Path, stdin: Iterable[str] | None = None) -> list[str]:
    """Photo paths of a folder (recursive, image suffixes, sorted), or one path per line from stdin ('-')."""
    if str(src) == "-":
        lines = sys.stdin if stdin is None else stdin
        return [line.strip() for line in lines if line.strip()]
    root = Path(src)
    if not root.exists():
        raise DataError(f"{root}: no such folder; give a folder of photos or '-' to read paths from stdin")
    if root.is_file():
        raise DataError(f"{root} is a file; give the folder that holds the photos (or '-' for a list on stdin)")
    found = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise DataError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def default_output(src: str | Path) -> Path:
    """`<folder name>.h5` in the working directory (`faces.h5` for a list on stdin)."""
    name = "faces" if str(src) == "-" else Path(src).resolve().name
    return Path.cwd() / f"{name}.h5"


def check_output(out: Path, overwrite: bool) -> Path:
    """Refuse to replace a finished file unless asked: a pyramid can cost hours of detection."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists; choose another --out or pass --overwrite")
    return out


@dataclass
class _Batch:
    """The result of one batch of photos: one shard on disk."""

    images: np.ndarray
    meta: list[FaceMeta]
    skipped: list[tuple[str, str]]

    def save(self, path: Path) -> None:
        with atomic_write(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh, images=self.images,
                source=np.array([m.source for m in self.meta], dtype=str),
                face_index=np.array([m.face_index for m in self.meta], np.int32),
                box=np.array([m.box for m in self.meta], np.float32).reshape(-1, 4),
                landmarks=np.array([m.landmarks for m in self.meta], np.float32).reshape(-1, 5, 2),
                confidence=np.array([m.confidence for m in self.meta], np.float32),
                quad=np.array([m.quad for m in self.meta], np.float32).reshape(-1, 4, 2),
                skipped_source=np.array([s for s, _ in self.skipped], dtype=str),
                skipped_reason=np.array([r for _, r in self.skipped], dtype=str),
            )

    @classmethod
    def load(cls, path: Path) -> _Batch:
        with np.load(path) as z:
            meta = [FaceMeta(source=str(s), face_index=int(i), box=b, landmarks=lm, confidence=float(c), quad=q)
                    for s, i, b, lm, c, q in zip(z["source"], z["face_index"], z["box"], z["landmarks"],
                                                  z["confidence"], z["quad"])]
            skipped = list(zip(map(str, z["skipped_source"]), map(str, z["skipped_reason"])))
            return cls(images=z["images"], meta=meta, skipped=skipped)


class FacePrep:
    """Turns a batch of decoded photos into crops and metadata, with the detector built once."""

    def __init__(self, options: PrepOptions, device: str = "cpu") -> None:
        self.options = options
        self.detector = None
        if options.crop != "center":
            from progan_cli.data.mtcnn import MTCNN

            self.detector = MTCNN(device=device, min_face=options.min_face).eval()

    def __call__(self, sources: list[str], photos: list[np.ndarray | str]) -> _Batch:
        """`photos[i]` is the decoded image of `sources[i]`, or the reason it could not be decoded."""
        opts = self.options
        ok = [i for i, p in enumerate(photos) if not isinstance(p, str)]
        skipped = [(sources[i], photos[i]) for i, p in enumerate(photos) if isinstance(p, str)]
        crops: list[np.ndarray] = []
        meta: list[FaceMeta] = []
        detections = self._detect([photos[i] for i in ok]) if self.detector is not None else [None] * len(ok)
        for i, det in zip(ok, detections):
            img = photos[i]
            if det is None:
                quad = center_quad(img.shape[1], img.shape[0])
                crops.append(crop_quad(img, quad, opts.target))
                meta.append(FaceMeta(source=sources[i], quad=quad))
                continue
            keep = self._select(det)
            if not keep:
                skipped.append((sources[i], "no face"))
                continue
            for rank, k in enumerate(keep):
                quad = (align_quad(det.landmarks[k]) if opts.crop == "align"
                        else box_quad(det.boxes[k], opts.margin))
                crops.append(crop_quad(img, quad, opts.target))
                meta.append(FaceMeta(source=sources[i], face_index=rank, box=det.boxes[k],
                                     landmarks=det.landmarks[k], confidence=float(det.scores[k]), quad=quad))
        skipped.sort(key=lambda s: sources.index(s[0]))
        t = opts.target
        images = np.stack(crops) if crops else np.zeros((0, t, t, 3), np.uint8)
        return _Batch(images=images, meta=meta, skipped=skipped)

    def _detect(self, photos: list[np.ndarray]) -> list:
        """MTCNN on copies no larger than MAX_DETECT_SIDE; boxes and landmarks mapped back to the photo."""
        from PIL import Image

        small, scales = [], []
        for img in photos:
            s = min(1.0, MAX_DETECT_SIDE / max(img.shape[:2]))
            if s < 1.0:
                size = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))
                img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
                s = img.shape[1] / photos[len(small)].shape[1]
            small.append(img)
            scales.append(s)
        dets = self.detector.detect(small)
        return [det if s == 1.0 else replace(det, boxes=det.boxes / s, landmarks=det.landmarks / s)
                for det, s in zip(dets, scales)]

    def _select(self, det) -> list[int]:
        """Indices of the faces to keep: confident and big enough; the largest one or all of them."""
        opts = self.options
        sides = np.minimum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])
        keep = [k for k in range(len(det.scores))
                if det.scores[k] >= opts.min_confidence and sides[k] >= opts.min_face]
        if opts.faces == "largest" and keep:
            areas = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
            keep = [max(keep, key=lambda k: areas[k])]
        return keep


def _decode(path: str) -> np.ndarray | str:
    try:
        return load_rgb(path)
    except UnreadableImage:
        return "unreadable"
    except FileNotFoundError:
        return "missing"


def _shard(parts: Path, index: int) -> Path:
    """The file of batch `index` under the shard folder."""
    return parts / f"batch-{index:06d}.npz"


def _fingerprint(sources: list[str], options: PrepOptions) -> str:
    h = hashlib.sha256(json.dumps(asdict(options), sort_keys=True).encode())
    for s in sources:
        h.update(s.encode() + b"\0")
    return h.hexdigest()


def _open_parts(parts: Path, sources: list[str], options: PrepOptions) -> int:
    """Create or reopen the shard folder; the number of batches already done."""
    manifest = parts / "manifest.json"
    fingerprint = _fingerprint(sources, options)
    if manifest.exists():
        if json.loads(manifest.read_text()).get("fingerprint") != fingerprint:
            raise UsageError(f"{parts} holds an interrupted prep of other photos or options; run that "
                             f"command again to finish it, or delete {parts}")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        with atomic_write(manifest) as tmp:
            tmp.write_text(json.dumps({"fingerprint": fingerprint, "options": asdict(options),
                                       "sources": len(sources), "progan_version": __version__}))
    done = 0
    while _shard(parts, done).exists():
        done += 1
    return done


def run_prep(
    sources: list[str],
    out: Path,
    options: PrepOptions,
    device: str = "cpu",
    workers: int = 2,
    overwrite: bool = False,
    on_batch: Callable[[int, int, int], None] | None = None,
) -> PrepSummary:
    """Write the pyramid of `sources` to `out`, resuming a previous interrupted run of the same command.

    An existing `out` is replaced only when the new file is complete (and only with `overwrite`).

    `on_batch(photos_done, images_so_far, skipped_so_far)` reports progress after every batch.
    """
    options.validate()
    out = check_output(out, overwrite)
    if not sources:
        raise DataError("no photos to prepare")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = out.with_name(out.name + ".parts")
    start = _open_parts(parts, sources, options)
    n_batches = (len(sources) + options.batch - 1) // options.batch
    t0 = time.perf_counter()
    images = skipped = 0
    for b in range(start):  # count what earlier runs did, for the progress display
        with np.load(_shard(parts, b)) as z:
            images += len(z["source"])
            skipped += len(z["skipped_source"])
    if on_batch:
        on_batch(min(start * options.batch, len(sources)), images, skipped)
    if start < n_batches:
        prep = FacePrep(options, device)
        todo = sources[start * options.batch:]
        for b, photos in enumerate(prefetch_batches(_decode, todo, options.batch, workers), start):
            chunk = sources[b * options.batch:(b + 1) * options.batch]
            result = prep(chunk, photos)
            result.save(_shard(parts, b))
            images += len(result.meta)
            skipped += len(result.skipped)
            if on_batch:
                on_batch(min((b + 1) * options.batch, len(sources)), images, skipped)
    summary = _assemble(parts, n_batches, out, options, len(sources))
    summary.seconds = time.perf_counter() - t0
    summary.resumed_batches = start
    shutil.rmtree(parts)
    return summary


def _assemble(parts: Path, n_batches: int, out: Path, options: PrepOptions, n_sources: int) -> PrepSummary:
    """All shards, in order, into `<out>.partial`, then renamed to `out`."""
    reasons: Counter[str] = Counter()
    attrs = {k: v for k, v in asdict(options).items() if k not in ("target", "batch", "compression")}
    with atomic_write(out) as tmp, PyramidWriter(tmp, options.target, compression=options.compression,
                                                 progan_version=__version__, **attrs) as writer:
        for b in range(n_batches):
            batch = _Batch.load(_shard(parts, b))
            writer.append(batch.images, batch.meta)
            writer.skip([s for s, _ in batch.skipped], [r for _, r in batch.skipped])
            reasons.update(r for _, r in batch.skipped)
        writer.set_attrs(sources=n_sources, skipped=dict(sorted(reasons.items())),
                         detector={} if options.crop == "center" else
                         {"name": "mtcnn", "min_face": options.min_face, "scale_factor": 0.709,
                          "thresholds": [0.6, 0.7, 0.7], "max_detect_side": MAX_DETECT_SIDE})
        count = writer.count
    return PrepSummary(out=str(out), sources=n_sources, images=count, skipped=dict(sorted(reasons.items())))
