"""`progan demo`: the whole toolchain end to end, offline, in minutes on a CPU, on images that come with an
installed package: prep (face detection on one photo, `--crop square` on a folder of small faces), training
from 4x4 to 16x16, a sample grid, a latent walk, SWD and FID against the training images.

Every step calls the function its command calls (`run_prep`, `training_loop`, `load_generator`,
`save_samples`, `save_walk`, `compute_swd`, `compute_fid`), so the demo is also the end-to-end smoke test.

The images ship inside scikit-image's wheel (the optional `demo` extra), read as files, never imported:
  - `skimage/data/astronaut.png`: a public-domain NASA portrait (Eileen Collins), for face detection;
  - `skimage/data/lfw_subset.npy`: 200 grayscale 25x25 crops from Labeled Faces in the Wild, the first 100
    of them aligned faces; those 100 are written as PNGs and are the training set.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from progan_cli.errors import DataError, UsageError
from progan_cli.files import atomic_write

SKIMAGE_DIST = "scikit-image"
ASTRONAUT = "skimage/data/astronaut.png"
LFW = "skimage/data/lfw_subset.npy"
LFW_FACES = 100  # the first 100 crops of lfw_subset.npy are faces, the rest are not
DEMO_HINT = 'pip install "progan[demo]"'
TARGET = 16
SEED = 0


@dataclass(frozen=True)
class DemoSize:
    """How much the demo trains and scores: `full` for people (2.5 minutes of training on one CPU core),
    `quick` for CI (about one minute)."""

    stable_kimg: float
    fade_kimg: float
    total_kimg: float
    minibatch: int
    lr: float
    fmap_base: int
    fmap_max: int
    latent_size: int
    n_fid: int  # generated images scored by FID (against the 100 training faces)
    walk_frames: int  # frames between two keyframes of the GIF


# Chosen by trying widths, minibatch, learning rate and phase lengths on these faces (one CPU thread, load ~7-10):
# 14 kimg (S = F = 1, 10 kimg at 16x16), minibatch 8, lr 0.003 drew recognisable faces (SWD 53 against the
# training faces, untrained 205) in 122 CPU-seconds; minibatch 16 or lr 0.001 drew textured blobs at that cost.
SIZES = {
    "full": DemoSize(stable_kimg=1, fade_kimg=1, total_kimg=14, minibatch=8, lr=0.003, fmap_base=256,
                     fmap_max=64, latent_size=64, n_fid=100, walk_frames=12),
    "quick": DemoSize(stable_kimg=0.5, fade_kimg=0.5, total_kimg=5, minibatch=8, lr=0.003, fmap_base=256,
                      fmap_max=64, latent_size=64, n_fid=32, walk_frames=4),
}


@dataclass
class DemoResult:
    """What the demo made: the numbers of its table and every file, by what it is."""

    folder: Path
    rows: list[tuple[str, str]] = field(default_factory=list)  # (what, value) for the table
    files: dict[str, Path] = field(default_factory=dict)  # what -> path
    swd: dict[str, float] = field(default_factory=dict)  # "trained" / "untrained" -> SWD x1e3
    fid: dict[str, float] = field(default_factory=dict)  # the same for FID, when the weights resolve
    seconds: float = 0.0


def skimage_file(name: str) -> Path:
    """A data file inside the installed scikit-image wheel, located without importing scikit-image."""
    try:
        path = Path(importlib.metadata.distribution(SKIMAGE_DIST).locate_file(name))
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(f"progan demo needs the optional 'demo' extra (its images ship with scikit-image): "
                         f"{DEMO_HINT}") from None
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed scikit-image; reinstall it ({DEMO_HINT})")
    return path


def demo_folder(out: Path | None, cwd: Path | None = None) -> Path:
    """`--out` (new or empty), or the first of progan-demo, progan-demo-2, ... that does not exist yet, so a
    second run never writes over the first."""
    if out is not None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--out {out} already holds files; give a new folder (the demo never writes over "
                             "an earlier one)")
        return out
    base = (cwd or Path.cwd()) / "progan-demo"
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


def write_lfw_faces(folder: Path) -> list[Path]:
    """The 100 aligned LFW faces of scikit-image as 25x25 grayscale PNGs (a folder of small real images)."""
    from PIL import Image

    faces = np.load(skimage_file(LFW), allow_pickle=False)[:LFW_FACES]  # float in [0, 1]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, face in enumerate(faces):
        path = folder / f"lfw_{i:03d}.png"
        with atomic_write(path) as tmp:
            Image.fromarray(np.rint(face * 255).astype(np.uint8), mode="L").save(tmp, format="PNG")
        paths.append(path)
    return paths


def run_demo(out: Path | None = None, quick: bool = False, device: str = "cpu", train_threads: int = 1,
             say: Callable[[str], None] = lambda text: None,
             on_progress: Callable[[Any, dict | None], None] | None = None) -> DemoResult:
    """Run every step into one new folder and return the table and the files. Training runs on
    `train_threads` CPU threads (see `_threads`), the rest on torch's current setting. `say` gets one line per
    step; `on_progress` is the training loop's live-display hook."""
    import torch

    from progan_cli.config import TrainConfig
    from progan_cli.data.prep import PrepOptions, list_sources, run_prep
    from progan_cli.data.pyramid import Pyramid
    from progan_cli.devices import resolve_device
    from progan_cli.images import save_grid
    from progan_cli.metrics.swd import compute_swd
    from progan_cli.networks import untrained_generator
    from progan_cli.data.stream import check_data
    from progan_cli.training.loop import training_loop

    size = SIZES["quick" if quick else "full"]
    astronaut = skimage_file(ASTRONAUT)
    skimage_file(LFW)  # both found before any work
    folder = demo_folder(out)
    dev = resolve_device(device)
    started = time.perf_counter()
    result = DemoResult(folder=folder)
    folder.mkdir(parents=True, exist_ok=True)

    # 1. Face detection and alignment (`progan prep photos/`): MTCNN on the NASA portrait.
    photos = folder / "photos"
    photos.mkdir()
    with atomic_write(photos / astronaut.name) as tmp:
        shutil.copyfile(astronaut, tmp)
    detected = run_prep(list_sources(photos), folder / "astronaut.h5", PrepOptions(target=64, crop="align"),
                        device=str(dev), workers=1)
    with Pyramid(detected.out) as pyr:
        if len(pyr) == 0:
            raise DataError(f"no face found in {astronaut}; the detector or its weights are broken")
        face, confidence = pyr.images(64)[0], float(pyr.meta("confidence")[0])
    save_grid(torch.from_numpy(face[None]).permute(0, 3, 1, 2), folder / "astronaut_face.png", 1)
    result.files["detected face (64x64, aligned)"] = folder / "astronaut_face.png"
    result.rows.append(("faces found in astronaut.png (MTCNN)", f"{detected.images} (confidence {confidence:.3f})"))
    say(f"prep: found {detected.images} face in {astronaut.name}, confidence {confidence:.3f}")

    # 2. A folder of small real images through `progan prep lfw/ --crop square --target 16`.
    faces = write_lfw_faces(folder / "lfw")
    square = PrepOptions(target=TARGET, crop="square")
    data = Path(run_prep(list_sources(folder / "lfw"), folder / "lfw.h5", square, device="cpu", workers=1).out)
    result.files["training images (pyramid 4..16)"] = data
    say(f"prep: {len(faces)} LFW faces (25x25) -> {data.name}, levels 4..{TARGET}")

    # 3. `progan train lfw.h5 --target 16` with tiny widths.
    cfg = TrainConfig(data=str(data.resolve()), target=TARGET, fmap_base=size.fmap_base, fmap_max=size.fmap_max,
                      latent_size=size.latent_size, stable_kimg=size.stable_kimg, fade_kimg=size.fade_kimg,
                      total_kimg=size.total_kimg, minibatch={r: size.minibatch for r in (4, 8, 16)}, lr=size.lr,
                      lr_overrides={}, device=str(dev), workers=0, seed=SEED, tick_kimg=size.total_kimg / 6,
                      snapshot_ticks=3, keep_checkpoints=1, grid=(10, 10))
    check_data(cfg)
    run = folder / "run"
    say(f"train: 4x4 -> {TARGET}x{TARGET}, {size.total_kimg:g} kimg (widths fmap_base {size.fmap_base}, "
        f"fmap_max {size.fmap_max}, latent {size.latent_size})")
    t0 = time.perf_counter()
    with _threads(train_threads):
        training_loop(cfg, run, on_progress=on_progress)
    train_sec = time.perf_counter() - t0
    result.files["run folder (config, log, checkpoint)"] = run
    result.files["training grids per tick"] = run / "samples"
    result.rows.append(("training", f"{size.total_kimg:g} kimg in {train_sec:.0f} s "
                                    f"({size.total_kimg * 1000 / train_sec:.0f} images/s)"))

    # 4. `progan sample run --n 100 --grid samples.png` and `progan interpolate run --out walk.gif`.
    from progan_cli import sampling

    gen = sampling.load_generator(run, dev)
    sampling.save_samples(gen, range(100), SEED, TARGET, grid=folder / "samples.png", cols=10)
    result.files["samples of G_ema (10x10)"] = folder / "samples.png"
    result.files["training faces (10x10, the same layout)"] = run / "samples" / "reals.png"
    walk = sampling.walk_latents(gen, SEED, 4, keyframes=(0, 1, 2, 3), frames=size.walk_frames)
    sampling.save_walk(sampling.walk_frames(gen, walk, TARGET, 4, zoom=4), folder / "walk.gif", "gif", fps=12)
    result.files["latent walk (GIF, 4 walks)"] = folder / "walk.gif"
    say("sample: samples.png, walk.gif")

    # 5. `progan swd lfw.h5 run --n 100` and `progan fid lfw.h5 run --n N`, and the same for the network the
    #    run started from: images 0.. of set 0 (those of samples.png) against the training faces.
    from progan_cli.metrics.sources import GeneratorSource, open_sources

    reals, trained = open_sources([data, run], None, LFW_FACES, dev, SEED)
    untrained = GeneratorSource(untrained_generator(cfg).to(dev), TARGET, LFW_FACES, dev, SEED, "untrained G")
    result.swd = {name: compute_swd(reals.images().to(dev), fakes.images().to(dev), seed=SEED)["mean"]
                  for name, fakes in (("trained", trained), ("untrained", untrained))}
    result.rows.append((f"SWD x1e3, {LFW_FACES} vs the {LFW_FACES} training faces: G_ema / untrained",
                        f"{result.swd['trained']:.1f} / {result.swd['untrained']:.1f}"))
    say(f"SWD x1e3 against the training faces: G_ema {result.swd['trained']:.1f}, untrained "
        f"{result.swd['untrained']:.1f}")
    result.fid = _fid(reals, {"trained": trained.G, "untrained": untrained.G}, size.n_fid, dev, say)
    if result.fid:
        result.rows.append((f"FID, {size.n_fid} vs the {LFW_FACES} training faces: G_ema / untrained",
                            f"{result.fid['trained']:.1f} / {result.fid['untrained']:.1f}"))
    result.seconds = time.perf_counter() - started
    result.rows.append(("demo, all steps", f"{result.seconds:.0f} s"))
    return result


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """Train the tiny networks on `count` threads, one by default: a second one gains nothing at these widths,
    and on a busy machine two threads spin against each other. Measured here, 3 kimg of the demo's run: 29-31 s on one thread,
    27-29 s (twice the CPU time) on two at load ~1.5; at load ~10-12 a 12 kimg run took 86 CPU-seconds on
    one thread, while on two it had used 150 CPU-seconds for its first 2 kimg."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fid(reals: Any, generators: dict[str, Any], n: int, device: Any, say: Callable[[str], None]) -> dict[str, float]:
    """FID of `n` images of each generator against `reals` (compute_fid, as `progan fid`); {} and a line saying
    why when no Inception weights resolve offline."""
    from progan_cli.metrics.features import Extractor
    from progan_cli.metrics.fid import compute_fid
    from progan_cli.metrics.sources import GeneratorSource

    try:
        extractor = Extractor(None, "ttur", device)
    except DataError as exc:
        say(f"FID skipped: {exc}")
        return {}
    say(f"FID: Inception on the {reals.count} training faces and {n} images of each generator")
    return {name: compute_fid(reals, GeneratorSource(G, TARGET, n, device, SEED, name), extractor)["fid"]
            for name, G in generators.items()}
