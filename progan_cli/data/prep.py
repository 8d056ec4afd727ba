"""`progan prep`: photos -> square crops (faces, or whole images) -> one pyramid file, resumable after any stop.

Photos are processed in fixed batches, in sorted order, by a short pipeline: threads decode the next batch
while the main thread detects the faces of this one (on the GPU when there is one) and one more thread
crops the previous batch and saves it atomically as a shard under `<out>.parts/`. Once all shards exist they
are assembled into a temporary file beside `<out>`, which is renamed to `<out>`. A run stopped at any point
(SIGINT, SIGTERM to the whole process group, SIGKILL, a crash) and started again with the same command
reuses the shards, so the result is byte for byte what an uninterrupted run writes, with no duplicates.

What would waste the run is refused before it: output paths, free disk for the whole job, and on the
first batch, crops smaller than the target (upscaled) unless asked for.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from progan_cli import __version__
from progan_cli.data.faces import (
    CROPS, DETECTING_CROPS, IMAGE_SUFFIXES, UnreadableImage, align_quad, box_quad, center_quad, crop_quad,
    load_rgb, outside_fraction, quad_side, square_quad)
from progan_cli.data.pyramid import FaceMeta, PyramidWriter, resolutions_up_to
from progan_cli.errors import DataError, ProganError, UsageError
from progan_cli.files import atomic_write
from progan_cli.prefetch import prefetch_batches
from progan_cli.resolutions import is_resolution

# Detection runs on a copy whose long side is at most this; faces are cropped from the full photo.
# A 20 px face at this size is ~90 px in a 4600 px photo: smaller faces would be upscaled for any target
# above 64, so little is lost, and MTCNN on a 14 MP photo would take seconds.
MAX_DETECT_SIDE = 1024
# A kept crop with more than this share of its area outside the photo is reported as mostly padding.
MOSTLY_PADDING = 0.5
# What to try when every photo was skipped for a reason.
_HINTS = {
    "no face": "for images that are not faces use --crop square",
    "too small": "use a smaller --target or pass --upscale",
    "too much padding": "raise --max-padding",
    "not square": "use --crop square",
    "missing": "check the paths",
    "unreadable": "check the files are images",
}


@dataclass(frozen=True)
class PrepOptions:
    """Everything that decides the content of the output file (and so must match on resume)."""

    target: int = 128
    crop: str = "align"
    faces: str = "largest"
    min_face: int = 20  # mtcnn.MIN_FACE, written out: importing data/mtcnn.py imports torch, which crops
    # that detect nothing never need (tests/test_prep.py holds the two equal)
    min_confidence: float = 0.8
    margin: float = 0.25
    batch: int = 32
    compression: str | None = None
    upscale: bool = False
    max_padding: float = 1.0

    def validate(self) -> None:
        if not is_resolution(self.target):
            raise UsageError(f"--target must be a power of two from 4 to 1024, not {self.target}")
        if self.crop not in CROPS:
            raise UsageError(f"--crop must be one of {', '.join(CROPS)}, not {self.crop!r}")
        if self.faces not in ("largest", "all"):
            raise UsageError(f"--faces must be 'largest' or 'all', not {self.faces!r}")
        if self.min_face < 12:  # mtcnn.CELL, written out as min_face is
            raise UsageError("--min-face must be at least 12 (MTCNN's smallest window)")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise UsageError("--min-confidence must be between 0 and 1")
        if self.margin < 0:
            raise UsageError("--margin must be >= 0")
        if self.batch < 1:
            raise UsageError("--batch must be >= 1")
        if self.compression not in (None, "gzip", "lzf"):
            raise UsageError("--compression must be gzip or lzf")
        if not 0.0 <= self.max_padding <= 1.0:
            raise UsageError(f"--max-padding must be between 0 and 1 (a share of the crop), not {self.max_padding}")

    @property
    def detects(self) -> bool:
        return self.crop in DETECTING_CROPS


def check_workers(workers: int) -> int:
    """--workers: decoding threads; 0 decodes in the main thread (no read-ahead)."""
    if workers < 0:
        raise UsageError(f"--workers must be 0 (decode in the main thread) or more, not {workers}")
    return workers


@dataclass
class PrepSummary:
    """What a prep run did; printed at the end and stored in the file's attributes."""

    out: str
    sources: int
    images: int
    skipped: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    upscaled: int = 0
    mostly_padding: int = 0
    seconds: float = 0.0
    resumed_batches: int = 0

    @property
    def photos_per_second(self) -> float:
        return self.sources / self.seconds if self.seconds > 0 else 0.0

    def describe(self, options: PrepOptions) -> str:
        """The closing line of the command: counts, and what to pass to change them."""
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items()) or "none"
        text = (f"{self.images} images from {self.sources} photos in {self.seconds:.1f} s "
                f"({self.photos_per_second:.1f} photos/s); skipped: {skipped}")
        if self.dropped:
            text += "; faces left out: " + ", ".join(f"{n} {reason}" for reason, n in self.dropped.items())
        if self.upscaled:
            text += f"; {self.upscaled} upscaled (crop below {options.target} px)"
        if self.mostly_padding:
            text += (f"; {self.mostly_padding} mostly reflection padding "
                     f"(--max-padding {MOSTLY_PADDING} leaves them out)")
        return text


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped prep; the shards finished so far stay for the same command to resume.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.parts: Path | None = None
        self.saved = 0
        self.batches = 0

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended: 130 SIGINT, 143 SIGTERM."""
        return 128 + self.signum

    def advice(self) -> str:
        """One line: what is kept and the two ways on."""
        name = signal.Signals(self.signum).name
        if self.parts is None or not self.saved:
            return f"{name}: stopped before any batch was finished; nothing was kept"
        return (f"{name}: stopped with {self.saved} of {self.batches} batches saved in {self.parts} "
                f"({_size(_folder_bytes(self.parts))}); run the same command again to continue where it "
                f"stopped, or discard them with `rm -r {self.parts}`")


@contextmanager
def raise_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` in the main thread.

    `timeout`, Slurm and systemd send SIGTERM to the whole process group and a terminal's Ctrl-C sends SIGINT
    to it. Prep runs no child process and Python delivers signals to the main thread only, so the decoding and
    cropping threads never see them: the main thread's exception stops the pipeline, waits for the shard
    being written and leaves only complete shards. Outside the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def list_sources(src: str | Path, stdin: Iterable[str] | None = None) -> list[str]:
    """Photo paths of a folder (recursive, image suffixes, sorted), or one path per line from stdin ('-')."""
    if str(src) == "-":
        lines = sys.stdin if stdin is None else stdin
        found = [line.strip() for line in lines if line.strip()]
        if not found:
            raise DataError("no paths on stdin; pipe one photo path per line, "
                            "e.g. `find photos/ -name '*.jpg' | progan prep -`")
        return found
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
    """Refuse an output that cannot be written, or a finished file unless asked: a pyramid can cost hours."""
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out} is a folder; --out names the file to write, e.g. --out {out / 'faces.h5'}")
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists; choose another --out or pass --overwrite")
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir():
        raise DataError(f"cannot write {out}: {parent} is a file, not a folder")
    return out


def parts_folder(out: Path) -> Path:
    """Where the shards of an unfinished prep of `out` live."""
    return out.with_name(out.name + ".parts")


@dataclass
class _Photo:
    """A decoded photo and the smaller copy face detection runs on (made in the decoding threads)."""

    pixels: np.ndarray
    small: np.ndarray


@dataclass
class _Crop:
    """One square prep will cut: from which photo of the batch, where, and what it costs in quality."""

    index: int
    meta: FaceMeta
    side: float
    padding: float


@dataclass
class _Plan:
    """What prep takes from one batch of photos, decided on the main thread before any pixel is resampled."""

    take: list[_Crop] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # faces left out of photos that gave others
    sides: list[float] = field(default_factory=list)  # of every crop prep would take at any size


@dataclass
class _Batch:
    """The result of one batch of photos: one shard on disk."""

    images: np.ndarray
    meta: list[FaceMeta]
    skipped: list[tuple[str, str]]
    dropped: list[str]
    side: np.ndarray
    padding: np.ndarray

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
                dropped=np.array(self.dropped, dtype=str),
                side=np.asarray(self.side, np.float32), padding=np.asarray(self.padding, np.float32),
            )

    @classmethod
    def load(cls, path: Path) -> _Batch:
        with np.load(path) as z:
            meta = [FaceMeta(source=str(s), face_index=int(i), box=b, landmarks=lm, confidence=float(c), quad=q)
                    for s, i, b, lm, c, q in zip(z["source"], z["face_index"], z["box"], z["landmarks"],
                                                  z["confidence"], z["quad"])]
            skipped = list(zip(map(str, z["skipped_source"]), map(str, z["skipped_reason"])))
            return cls(images=z["images"], meta=meta, skipped=skipped, dropped=list(map(str, z["dropped"])),
                       side=z["side"], padding=z["padding"])


class FacePrep:
    """Plans the crops of a batch of decoded photos (detecting faces with a detector built once) and cuts them."""

    def __init__(self, options: PrepOptions, device: str = "cpu") -> None:
        self.options = options
        self.detector = None
        if options.detects:
            from progan_cli.data.mtcnn import MTCNN

            self.detector = MTCNN(device=device, min_face=options.min_face).eval()

    def plan(self, sources: list[str], photos: list[_Photo | str]) -> _Plan:
        """`photos[i]` is the decoded `sources[i]`, or the reason it could not be decoded."""
        decoded = [i for i, p in enumerate(photos) if not isinstance(p, str)]
        detections = dict(zip(decoded, self._detect([photos[i] for i in decoded]))) if self.detector else {}
        plan = _Plan()
        for i, (source, photo) in enumerate(zip(sources, photos)):
            if isinstance(photo, str):
                plan.skipped.append((source, photo))
                continue
            if self.options.crop == "none" and photo.pixels.shape[0] != photo.pixels.shape[1]:
                plan.skipped.append((source, "not square"))
                continue
            candidates = self._candidates(i, source, photo.pixels, detections.get(i))
            if not candidates:
                plan.skipped.append((source, "no face"))
                continue
            plan.sides += [c.side for c in candidates]
            reasons = [self._reject(c) for c in candidates]
            kept = [c for c, r in zip(candidates, reasons) if r is None]
            if not kept:
                plan.skipped.append((source, reasons[0]))
                continue
            plan.dropped += [r for r in reasons if r is not None]
            plan.take += [replace(c, meta=replace(c.meta, face_index=rank)) for rank, c in enumerate(kept)]
        return plan

    def cut(self, plan: _Plan, photos: list[_Photo | str]) -> _Batch:
        """Resample the planned crops (the pixel work, run off the main thread)."""
        t = self.options.target
        images = [crop_quad(photos[c.index].pixels, c.meta.quad, t) for c in plan.take]
        return _Batch(images=np.stack(images) if images else np.zeros((0, t, t, 3), np.uint8),
                      meta=[c.meta for c in plan.take], skipped=plan.skipped, dropped=plan.dropped,
                      side=np.array([c.side for c in plan.take], np.float32),
                      padding=np.array([c.padding for c in plan.take], np.float32))

    def _candidates(self, index: int, source: str, photo: np.ndarray, det) -> list[_Crop]:
        """The crops the options ask for in one photo, before the size and padding limits."""
        opts = self.options
        h, w = photo.shape[:2]

        def crop(meta: FaceMeta) -> _Crop:
            return _Crop(index, meta, quad_side(meta.quad), outside_fraction(meta.quad, w, h))

        if det is None:
            quad = center_quad(w, h) if opts.crop == "center" else square_quad(w, h)
            return [crop(FaceMeta(source=source, quad=quad))]
        sides = np.minimum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])
        keep = [k for k in range(len(det.scores))
                if det.scores[k] >= opts.min_confidence and sides[k] >= opts.min_face]
        if opts.faces == "largest" and keep:
            areas = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
            keep = [max(keep, key=lambda k: areas[k])]
        return [crop(FaceMeta(source=source, box=det.boxes[k], landmarks=det.landmarks[k],
                              confidence=float(det.scores[k]),
                              quad=(align_quad(det.landmarks[k]) if opts.crop == "align"
                                    else box_quad(det.boxes[k], opts.margin))))
                for k in keep]

    def _reject(self, crop: _Crop) -> str | None:
        """Why a crop is left out, or None to keep it."""
        if crop.side < self.options.target and not self.options.upscale:
            return "too small"
        if crop.padding > self.options.max_padding:
            return "too much padding"
        return None

    def _detect(self, photos: list[_Photo]) -> list:
        """MTCNN on the detection copies; boxes and landmarks mapped back to the photo."""
        if not photos:
            return []
        dets = self.detector.detect([p.small for p in photos])
        scales = [p.small.shape[1] / p.pixels.shape[1] for p in photos]
        return [det if s == 1.0 else replace(det, boxes=det.boxes / s, landmarks=det.landmarks / s)
                for det, s in zip(dets, scales)]


def _decode(path: str, detects: bool) -> _Photo | str:
    """A photo and, for detection, its copy no larger than MAX_DETECT_SIDE; or why there is none."""
    from PIL import Image

    try:
        img = load_rgb(path)
    except UnreadableImage:
        return "unreadable"
    except FileNotFoundError:
        return "missing"
    small = img
    s = MAX_DETECT_SIDE / max(img.shape[:2])
    if detects and s < 1.0:
        size = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))
        small = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    return _Photo(img, small)


def _shard(parts: Path, index: int) -> Path:
    """The file of batch `index` under the shard folder."""
    return parts / f"batch-{index:06d}.npz"


def _finished_shards(parts: Path) -> int:
    """How many batches, from the first, have their shard on disk."""
    done = 0
    while _shard(parts, done).exists():
        done += 1
    return done


def _fingerprint(sources: list[str], options: PrepOptions) -> str:
    """Options and photos (path, size, modification time): a resumed run must be the same job."""
    h = hashlib.sha256(json.dumps(asdict(options), sort_keys=True).encode())
    for s in sources:
        try:
            st = os.stat(s)
            tag = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            tag = "-"
        h.update(os.fsencode(s) + f"\0{tag}\0".encode())
    return h.hexdigest()


def _reusable_shards(parts: Path, fingerprint: str, overwrite: bool) -> int:
    """Batches `parts` already holds for this job; clears a folder no command could reuse.

    Shards of another job (other photos or options) are kept, and this command refused with the exact way
    out, unless `overwrite` says to replace them. A folder with no finished batch is replaced silently.
    """
    if not parts.exists():
        return 0
    if not parts.is_dir():
        raise DataError(f"{parts} is a file where prep keeps its batches; remove it: rm {parts}")
    manifest = parts / "manifest.json"
    try:
        theirs = json.loads(manifest.read_text())
    except (OSError, ValueError):
        theirs = {}
    done = _finished_shards(parts)
    if theirs.get("fingerprint") == fingerprint:
        return done
    ours = all(p.name.startswith(("manifest.json", "batch-")) for p in parts.iterdir())
    if ours and (done == 0 or overwrite):
        shutil.rmtree(parts)
        return 0
    if not ours:
        raise DataError(f"{parts} holds files that are not prep's; move them away, or remove the folder: "
                        f"rm -r {parts}")
    command = f" (`{theirs['command']}`)" if theirs.get("command") else ""
    raise UsageError(f"{parts} holds {done} finished batches of a prep with other photos or options{command}; "
                     f"run that command again to finish it, or discard them with `rm -r {parts}` "
                     "(or pass --overwrite)")


def _create_parts(parts: Path, fingerprint: str, options: PrepOptions, n_sources: int, command: str | None) -> None:
    if (parts / "manifest.json").exists():
        return
    parts.mkdir(parents=True, exist_ok=True)
    with atomic_write(parts / "manifest.json") as tmp:
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "options": asdict(options), "sources": n_sources,
                                   "command": command, "progan_version": __version__}))


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files of `out` left by a process that no longer runs (SIGKILL, power loss during assembly)."""
    for tmp in out.parent.glob(f"{glob.escape(out.name)}.*.partial"):
        pid = tmp.name[len(out.name) + 1:-len(".partial")]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(nbytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def _check_disk(out: Path, target: int, shard_images: float, out_images: float) -> None:
    """Refuse a job the disk cannot hold at its peak: every shard (target crops) and the assembled file (every
    level, counted uncompressed) exist together just before the shards are removed."""
    need = shard_images * 3 * target * target + out_images * sum(3 * r * r for r in resolutions_up_to(target))
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise DataError(f"{out} needs about {_size(need)} of disk at its peak ({out_images:.0f} images at "
                        f"{target}x{target} with every lower level, plus its {_size(shard_images * 3 * target ** 2)} "
                        f"of batches), but {out.parent} has {_size(free)} free; free space, or choose a smaller "
                        "--target or another --out")


def _disk_full(exc: OSError) -> bool:
    return exc.errno == errno.ENOSPC or "No space left" in str(exc)


class _Discard(Exception):
    """Carries a refusal out of the pipeline after which no later command can reuse the shards: they are removed
    so that the corrected command starts clean."""

    def __init__(self, error: ProganError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _Tally:
    """Counts over the batches so far, for progress and for the first-batch checks."""

    photos: int = 0
    images: int = 0
    skipped: int = 0
    checked: bool = False


def run_prep(
    sources: list[str],
    out: Path,
    options: PrepOptions,
    device: str = "cpu",
    workers: int = 2,
    overwrite: bool = False,
    command: str | None = None,
    on_batch: Callable[[int, int, int], None] | None = None,
) -> PrepSummary:
    """Write the pyramid of `sources` to `out`, resuming a previous unfinished run of the same job.

    An existing `out` is replaced only when the new file is complete (and only with `overwrite`); with
    `overwrite`, the shards of an unfinished prep of `out` with other options are replaced too. `command`
    (the command line) is recorded beside the shards, to name it if another command finds them.
    Run it inside `raise_on_signals()` for SIGTERM to stop it as cleanly as SIGINT does.

    `on_batch(photos_done, images_so_far, skipped_so_far)` reports progress once every up-front check has
    passed (with what a resumed run already had), then after every batch.
    """
    options.validate()
    check_workers(workers)
    out = check_output(out, overwrite)
    if not sources:
        raise DataError("no photos to prepare")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot write {out}: {exc.strerror}") from None
    _remove_stale_temporaries(out)
    parts = parts_folder(out)
    fingerprint = _fingerprint(sources, options)
    start = _reusable_shards(parts, fingerprint, overwrite)
    n_batches = (len(sources) + options.batch - 1) // options.batch
    _check_disk(out, options.target, max(0, len(sources) - start * options.batch), len(sources))
    _create_parts(parts, fingerprint, options, len(sources), command)
    t0 = time.perf_counter()
    tally = _Tally(photos=min(start * options.batch, len(sources)))
    for b in range(start):  # count what earlier runs did, for the progress display
        with np.load(_shard(parts, b)) as z:
            tally.images += len(z["source"])
            tally.skipped += len(z["skipped_source"])
    tally.checked = tally.images > 0
    if on_batch:
        on_batch(tally.photos, tally.images, tally.skipped)
    try:
        if start < n_batches:
            _run_batches(FacePrep(options, device), sources, out, start, options, workers, tally, on_batch)
        if tally.images == 0:
            raise _Discard(_nothing_kept(parts, n_batches, len(sources)))
        summary = _assemble(parts, n_batches, out, options, len(sources))
    except Interrupted as stop:
        stop.parts, stop.saved, stop.batches = parts, _finished_shards(parts), n_batches
        raise
    except _Discard as refusal:
        shutil.rmtree(parts, ignore_errors=True)
        raise refusal.error from None
    summary.seconds = time.perf_counter() - t0
    summary.resumed_batches = start
    shutil.rmtree(parts)
    return summary


def _run_batches(prep: FacePrep, sources: list[str], out: Path, start: int, options: PrepOptions, workers: int,
                 tally: _Tally, on_batch: Callable[[int, int, int], None] | None) -> None:
    """Decode (threads) -> detect and plan (this thread) -> cut and save (one thread), one batch in each.

    At most three batches of photos are in memory. On any exception here (a signal included) the batch being
    saved is finished and the ones not started are dropped, so only complete shards remain.
    """
    parts, batch = parts_folder(out), options.batch

    def cut_and_save(index: int, plan: _Plan, photos: list) -> _Batch:
        result = prep.cut(plan, photos)
        try:
            result.save(_shard(parts, index))
        except OSError as exc:
            if _disk_full(exc):
                raise DataError(f"disk full writing {_shard(parts, index)}; free space and run the same command "
                                "again (finished batches are kept)") from None
            raise
        return result

    def finished(future: Future) -> None:
        result = future.result()
        tally.photos = min(tally.photos + batch, len(sources))
        tally.images += len(result.meta)
        tally.skipped += len(result.skipped)
        if on_batch:
            on_batch(tally.photos, tally.images, tally.skipped)

    decoded = prefetch_batches(partial(_decode, detects=options.detects), sources[start * batch:], batch, workers)
    with closing(decoded), ThreadPoolExecutor(max_workers=1, thread_name_prefix="prep-cut") as cutter:
        previous: Future | None = None
        try:
            for b, photos in enumerate(decoded, start):
                chunk = sources[b * batch:(b + 1) * batch]
                plan = prep.plan(chunk, photos)
                if not tally.checked:
                    tally.checked = _check_first_batch(plan, chunk, photos, options, out, len(sources) - b * batch)
                future = cutter.submit(cut_and_save, b, plan, photos)
                if previous is not None:
                    finished(previous)
                previous = future
            if previous is not None:
                finished(previous)
        except BaseException:
            cutter.shutdown(wait=True, cancel_futures=True)
            raise


def _check_first_batch(plan: _Plan, chunk: list[str], photos: list, options: PrepOptions, out: Path,
                       photos_left: int) -> bool:
    """On the first batch that has crops, refuse what would waste the whole run; False while none had any.

    Called only while no image has been kept, so the earlier batches hold none and `photos_left` (from this
    batch on) is what the output will be made of.
    """
    decodable = [p.pixels for p in photos if not isinstance(p, str)]
    if options.crop == "none" and decodable and all(p.shape[0] != p.shape[1] for p in decodable):
        h, w = decodable[0].shape[:2]
        raise _Discard(UsageError(f"--crop none takes square images, and none of the first {len(decodable)} is "
                                  f"(e.g. {w}x{h}); use --crop square for the largest centred square"))
    if not plan.sides:
        return False
    if not options.upscale:
        median = float(np.median(plan.sides))
        if median < options.target:
            what = "faces" if options.detects else f"{options.crop} crops"
            fit = (f"use --target {min(1024, 2 ** int(math.log2(median)))}" if median >= 4
                   else "these images are too small for any --target;")
            raise _Discard(UsageError(
                f"the {what} in the first {len(chunk)} photos are {median:.0f} px across (median), smaller than "
                f"--target {options.target}; {fit} or pass --upscale to enlarge them"))
    per_photo = len(plan.take) / len(chunk)
    if per_photo > 1:  # --faces all on group photos: the up-front estimate counted one image per photo
        _check_disk(out, options.target, photos_left * per_photo, photos_left * per_photo)
    return True


def _nothing_kept(parts: Path, n_batches: int, n_sources: int) -> DataError:
    reasons: Counter[str] = Counter()
    for b in range(n_batches):
        with np.load(_shard(parts, b)) as z:
            reasons.update(map(str, z["skipped_reason"]))
    counts = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    hint = _HINTS.get(reasons.most_common(1)[0][0], "") if reasons else ""
    return DataError(f"no image from {n_sources} photos (skipped: {counts}); nothing written"
                     + (f"; {hint}" if hint else ""))


def _detector_attrs(options: PrepOptions) -> dict:
    """The detector settings a pyramid file records: MTCNN's own defaults and the --min-face it ran with."""
    from progan_cli.data.mtcnn import SCALE_FACTOR, THRESHOLDS

    return {"name": "mtcnn", "min_face": options.min_face, "scale_factor": SCALE_FACTOR,
            "thresholds": list(THRESHOLDS), "max_detect_side": MAX_DETECT_SIDE}


def _assemble(parts: Path, n_batches: int, out: Path, options: PrepOptions, n_sources: int) -> PrepSummary:
    """All shards, in order, into a temporary file renamed to `out`."""
    reasons: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    upscaled = padded = 0
    attrs = {k: v for k, v in asdict(options).items() if k not in ("target", "batch", "compression")}
    try:
        with atomic_write(out) as tmp, PyramidWriter(tmp, options.target, compression=options.compression,
                                                     progan_version=__version__, **attrs) as writer:
            for b in range(n_batches):
                batch = _Batch.load(_shard(parts, b))
                writer.append(batch.images, batch.meta)
                writer.skip([s for s, _ in batch.skipped], [r for _, r in batch.skipped])
                reasons.update(r for _, r in batch.skipped)
                dropped.update(batch.dropped)
                upscaled += int(np.sum(batch.side < options.target))
                padded += int(np.sum(batch.padding > MOSTLY_PADDING))
            writer.set_attrs(sources=n_sources, skipped=dict(sorted(reasons.items())),
                             dropped_faces=dict(sorted(dropped.items())), upscaled=upscaled,
                             mostly_padding=padded,
                             detector={} if not options.detects else _detector_attrs(options))
            count = writer.count
    except OSError as exc:
        if _disk_full(exc):
            raise DataError(f"disk full writing {out}; free space and run the same command again "
                            f"(the batches in {parts} are kept)") from None
        raise
    return PrepSummary(out=str(out), sources=n_sources, images=count, skipped=dict(sorted(reasons.items())),
                       dropped=dict(sorted(dropped.items())), upscaled=upscaled, mostly_padding=padded)
