"""Using a trained generator: loading any network file progan reads, rendering, latent walks, and writing PNG
folders, .npz arrays, grids, GIFs, MP4s and frame folders.

Image i of set `seed` has one latent, a function of (seed, i) alone (`progan_cli.networks.latents`).

The generator runs in batches of a fixed size padded with zero rows (G has no layer that mixes samples), so
an image's pixels depend on neither how many images are made at once nor which others are: `--n 64` and
`--seeds 7` give byte-identical image 7 on one device and precision. Another device or precision gives the
same latents but pixels that may differ by float rounding.
"""

from __future__ import annotations

import math
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from progan_cli.config import PRECISIONS, TrainConfig
from progan_cli.devices import tf32
from progan_cli.errors import UsageError
from progan_cli.files import atomic_write
from progan_cli.formats import Networks, load_networks
from progan_cli.formats.progan import write_export
from progan_cli.images import grid_image, save_grid, to_uint8
from progan_cli.networks.latents import LATENT_BLOCK, MAX_SEED, check_seed, latents

CPU_BATCH = 8  # measured: larger batches gain nothing on the CPU, and padding a lone image costs less
VIDEO_HINT = 'pip install "progan[video]"'


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    """'3,17,100-120' -> [3, 17, 100, ..., 120] (ranges inclusive, in the order given)."""
    picked: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise UsageError(f"{option} {text!r}: give image numbers and ranges like 3,17,100-120")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise UsageError(f"{option} {text!r}: the range {part.strip()} runs backwards; write {last}-{first}")
        picked.extend(range(first, last + 1))
    return picked


def pick_images(n: int | None, seeds: str | None, seed: int) -> Sequence[int]:
    """The image numbers of `--n N` (0..N-1, 16 by default) or `--seeds LIST` (each once), checking `--seed`."""
    check_seed(seed)
    if seeds is not None:
        if n is not None:
            raise UsageError("--n and --seeds exclude each other: --n N makes images 0..N-1, --seeds picks numbers")
        picked = parse_seeds(seeds)
        twice = next((i for i, count in Counter(picked).items() if count > 1), None)
        if twice is not None:
            raise UsageError(f"--seeds {seeds!r} names image {twice} twice")
        return picked
    n = 16 if n is None else n
    if n < 1:
        raise UsageError(f"--n {n}: make at least one image")
    return range(n)


def slerp(a: torch.Tensor, b: torch.Tensor, t: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `a` (t = 0) to `b` (t = 1) along the great circle, for each t: (T, *a.shape).

    Latents of equal norm keep it; t = 0 returns `a` exactly (so a walk shows its keyframes as sampled).
    Computed in float64; nearly parallel latents fall back to a straight line.
    """
    a64, b64 = a.double(), b.double()
    cos = (a64 * b64).sum(-1, keepdim=True) / (a64.norm(dim=-1, keepdim=True) * b64.norm(dim=-1, keepdim=True))
    omega = cos.clamp(-1.0, 1.0).acos()
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, *[1] * a.ndim)
    sin = omega.sin()
    straight = sin < 1e-6
    wa = torch.where(straight, 1.0 - t, ((1.0 - t) * omega).sin() / torch.where(straight, 1.0, sin))
    wb = torch.where(straight, t, (t * omega).sin() / torch.where(straight, 1.0, sin))
    return (wa * a64 + wb * b64).float()


def keyframe_walk(keys: torch.Tensor, frames: int) -> torch.Tensor:
    """`frames` slerp steps from each keyframe to the next, looping back to the first: (len(keys) * frames,
    *keys.shape[1:]); frame k * frames is keyframe k exactly."""
    t = torch.arange(frames, dtype=torch.float64) / frames
    return torch.cat([slerp(keys[k], keys[(k + 1) % len(keys)], t) for k in range(len(keys))])


def smooth_walk(seed: int, num_frames: int, cells: int, latent_size: int, sigma_frames: float) -> torch.Tensor:
    """The official util_scripts `generate_interpolation_video` walk: a latent per frame and cell, Gaussian-
    smoothed along time (sigma in frames, wrap-around so it loops), divided by the global RMS.

    Our draws are images 0, 1, ... of set `seed` (frame f, cell c is image f * cells + c), where the official
    code draws raw Gaussians from NumPy. (num_frames, cells, latent_size).
    """
    from scipy.ndimage import gaussian_filter1d

    z = latents(seed, range(num_frames * cells), latent_size).numpy().reshape(num_frames, cells, latent_size)
    z = gaussian_filter1d(z, sigma_frames, axis=0, mode="wrap")
    return torch.from_numpy(z / np.sqrt(np.mean(np.square(z))))


# -------------------------------------------------------------------------------------------- rendering


def generation_batch(G: nn.Module, res: int, device: torch.device) -> int:
    """Images per forward pass. On a GPU the official metric rule clip(8192 // res, 4, 256) (8 at 1024),
    halved while the widest activations would fill more than half the free memory; CPU_BATCH on the CPU.

    The pixels depend on this number (a batch's shape picks the convolution algorithm), so it depends on the
    resolution only, except on a GPU too full for it.
    """
    if device.type != "cuda":
        return CPU_BATCH
    batch = int(np.clip(8192 // res, 4, 256))
    widths = [rgb.weight.shape[1] for rgb in getattr(G, "to_rgb", [])] or [3]
    widest = max(c * (4 << k) ** 2 for k, c in enumerate(widths) if 4 << k <= res)
    free, _ = torch.cuda.mem_get_info(device)
    while batch > 1 and 4 * batch * widest * 4 > free // 2:  # ~4 float32 activations alive at once
        batch //= 2
    return batch


def render(G: nn.Module, z: torch.Tensor, res: int, *, alpha: float = 1.0, device: torch.device | str = "cpu",
           precision: str = "fp32", batch: int | None = None) -> Iterator[torch.Tensor]:
    """uint8 NCHW images (on the CPU) of latents `z`, one tensor per forward pass of `batch` rows (the last
    one padded with zero rows), the official [-1, 1] -> [0, 255] conversion. `precision`: bf16 under
    autocast, tf32 with TF32 matmuls and convolutions on CUDA, fp32 in IEEE fp32."""
    device = torch.device(device)
    batch = batch or generation_batch(G, res, device)
    padded = torch.zeros(batch, z.shape[1])
    for start in range(0, len(z), batch):
        chunk = z[start:start + batch]
        padded[: len(chunk)] = chunk
        padded[len(chunk):] = 0.0
        # The modes are entered per pass, never held across a yield: a consumer that stops early would
        # otherwise unwind them later, wherever the generator is collected. IEEE fp32 unless asked otherwise.
        with (torch.inference_mode(), tf32(precision == "tf32"),
              torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")):
            images = to_uint8(G(padded.to(device), res, alpha)[: len(chunk)]).cpu()
        yield images


def generate(G: nn.Module, seed: int, indices: Sequence[int], res: int, **kwargs) -> Iterator[torch.Tensor]:
    """uint8 NCHW images `indices` of set `seed` (see the module docstring), in order, a forward pass at a
    time; latents are made a block at a time so n is not bounded by memory. kwargs go to `render`."""
    latent_size = G.latent_size
    for start in range(0, len(indices), LATENT_BLOCK):
        yield from render(G, latents(seed, indices[start:start + LATENT_BLOCK], latent_size), res, **kwargs)


def rebatch(batches: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """The rows of `batches` again in batches of `size` (the last may be smaller)."""
    rows: torch.Tensor | None = None
    for batch in batches:
        rows = batch if rows is None else torch.cat([rows, batch])
        while len(rows) >= size:
            yield rows[:size]
            rows = rows[size:]
    if rows is not None and len(rows):
        yield rows


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class TrainedGenerator:
    """A generator ready to sample (from `load_generator`): the network and what its file says of it.

    `G.sample(16, seed=0)` gives images 0..15 of set 0 as uint8 NCHW at `G.res`.
    """

    net: nn.Module  # progan_cli.networks.Generator: net(z, res, alpha) -> float images in [-1, 1]
    about: Networks  # the file's config, how far it grew, where the weights came from (its weights dropped)
    weights: str  # "G_ema" (the default: also the official Gs and the zoo's avgG) or "G" (the trained weights)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"

    @property
    def config(self) -> TrainConfig:
        return self.about.config

    @property
    def source(self) -> str:
        return self.about.source

    @property
    def res(self) -> int:
        """The default resolution: the highest one rendered with its layers fully in (the previous one during
        a fade)."""
        return self.about.res

    @property
    def resolutions(self) -> list[int]:
        """Every resolution it has grown to; the last is mid-fade when its alpha is below 1."""
        return self.about.resolutions

    @property
    def latent_size(self) -> int:
        return self.config.latent_size

    @property
    def cur_nimg(self) -> int | None:
        """Real images its run had shown, when the file records them (published networks do not)."""
        return self.about.cur_nimg

    @property
    def kimg(self) -> float | None:
        return None if self.cur_nimg is None else self.cur_nimg / 1000

    @property
    def label(self) -> str:
        """What it is, for messages: "G_ema of runs/00000-x/... (300 kimg)", or of a published file, its kind."""
        about = f"{self.kimg:g} kimg" if self.kimg is not None else self.about.kind
        if self.about.licence:
            about += f", {self.about.licence}"
        return f"{self.weights} of {self.source} ({about})"

    def alpha(self, res: int) -> float:
        """Weight of the newest layers at `res`: below 1 only at a resolution still fading in, as in training."""
        return self.about.alpha_at(res)

    def check_res(self, res: int | None) -> int:
        """`res`, or the default when None; UsageError when the run has not grown to it."""
        if res is None:
            return self.res
        if res not in self.resolutions:
            top = self.resolutions[-1]
            raise UsageError(f"--res {res}: {self.source} has grown to {top}x{top} (it renders "
                             f"{', '.join(map(str, self.resolutions))})")
        return res

    def to(self, device: torch.device | str) -> TrainedGenerator:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def render(self, z: torch.Tensor, res: int | None = None) -> Iterator[torch.Tensor]:
        """uint8 NCHW images of the latents `z`, a forward pass at a time (see `render`)."""
        res = self.check_res(res)
        return render(self.net, z, res, alpha=self.alpha(res), device=self.device, precision=self.precision)

    def generate(self, indices: Sequence[int], seed: int = 0, res: int | None = None) -> Iterator[torch.Tensor]:
        """uint8 NCHW images `indices` of set `seed`, a forward pass at a time (see `generate`)."""
        res = self.check_res(res)
        return generate(self.net, seed, indices, res, alpha=self.alpha(res), device=self.device,
                        precision=self.precision)

    def sample(self, n: int | Sequence[int] = 16, seed: int = 0, res: int | None = None) -> torch.Tensor:
        """Images 0..n-1 (or the image numbers given) of set `seed`: uint8 NCHW on the CPU."""
        indices = range(n) if isinstance(n, int) else list(n)
        return torch.cat(list(self.generate(indices, seed, res)))


def load_generator(path: Path | str, device: torch.device | str = "cpu", raw: bool = False,
                   precision: str = "fp32") -> TrainedGenerator:
    """The generator of a run folder (its newest checkpoint), a checkpoint file, an export (.safetensors), an
    official NVIDIA ProGAN pickle (its Gs) or a pytorch_GAN_zoo PGAN checkpoint (its avgG).

    Nothing from the file runs: see progan_cli.formats. `raw` takes the trained G instead of G_ema. The
    caller's RNG is left as it was.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    about = load_networks(path)
    if raw and "G" not in about.weights:
        raise UsageError(f"--raw: {path} is a file holding {', '.join(about.weights)} only, not the trained G; "
                         "use its run's checkpoint")
    weights = "G" if raw or "G_ema" not in about.weights else "G_ema"  # an export of G holds G alone
    net = about.build(weights)
    about.weights = {}  # built: the state dicts (all three networks of a checkpoint) are not needed again
    return TrainedGenerator(net, about, weights, precision=precision).to(device)


def export_generator(gen: TrainedGenerator, path: Path) -> Path:
    """Write the generator's weights and what rebuilds it (config, how far it grew, where the weights came
    from and their licence) as one safetensors file."""
    return write_export(path, gen.net.state_dict(), gen.weights, gen.about)


# ---------------------------------------------------------------------------------------------- writing


class Interrupted(Exception):
    """Ctrl-C while writing: `written` files are complete (each was written atomically), nothing else is."""

    def __init__(self, written: int) -> None:
        super().__init__(f"interrupted after {written} complete files")
        self.written = written


def check_new(path: Path, overwrite: bool, option: str = "--out") -> None:
    """Refuse an existing file or a folder that holds anything, unless `overwrite`."""
    if overwrite or not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    if path.is_dir():
        raise UsageError(f"{option} {path}: the folder already holds files; pass --overwrite to replace (files of "
                         "other names are kept) or choose another path")
    raise UsageError(f"{option} {path} already exists; pass --overwrite to replace it or choose another path")


def sample_outputs(out: Path | None, fmt: str | None, grid: Path | None, cols: int | None,
                   overwrite: bool) -> tuple[Path | None, Path | None]:
    """(PNG folder, .npz file) of `progan sample`, at most one set, checked before any work."""
    if out is None and grid is None:
        raise UsageError("say where the images go: --out FOLDER (PNGs), --out FILE.npz or --grid FILE.png")
    if fmt not in (None, "png", "npz"):
        raise UsageError(f"--format {fmt!r}: png (a folder of numbered PNGs) or npz (one uint8 NHWC array)")
    if cols is not None and (grid is None or cols < 1):
        raise UsageError("--cols sets the width of --grid FILE.png in images (a positive number)")
    if grid is not None:
        if grid.suffix.lower() != ".png":
            raise UsageError(f"--grid {grid}: the contact sheet is a PNG; end the name in .png")
        check_new(grid, overwrite, "--grid")
    if out is None:
        if fmt is not None:
            raise UsageError(f"--format {fmt} needs --out")
        return None, None
    kind = fmt or ("npz" if out.suffix.lower() == ".npz" else "png")
    if kind == "npz" and out.suffix.lower() != ".npz":
        raise UsageError(f"--out {out}: --format npz writes one file; end its name in .npz")
    if kind == "png" and out.suffix and not out.is_dir():
        raise UsageError(f"--out {out}: unknown extension {out.suffix!r}; give a folder (numbered PNGs) or a .npz "
                         "file (use --grid FILE.png for one contact sheet)")
    if out.exists() and out.is_dir() != (kind == "png"):
        raise UsageError(f"--out {out} is a {'folder' if out.is_dir() else 'file'}, not a {kind} destination")
    check_new(out, overwrite)
    return (out, None) if kind == "png" else (None, out)


def grid_cols(count: int, cols: int | None) -> int:
    """Columns of a contact sheet: as asked, else the squarest layout."""
    return cols or math.ceil(math.sqrt(count))


def check_grid_size(count: int, cols: int, res: int) -> None:
    """Refuse a contact sheet larger than image viewers open (Pillow's decompression-bomb limit)."""
    from PIL import Image

    pixels = cols * math.ceil(count / cols) * res * res
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise UsageError(f"--grid of {count} images at {res}x{res} is {pixels / 1e6:.0f}M pixels, more than image "
                         f"viewers open ({Image.MAX_IMAGE_PIXELS / 1e6:.0f}M); make fewer images or leave out --grid")


def write_png(array: np.ndarray, path: Path) -> None:
    """One HWC uint8 image as a PNG, atomically."""
    from PIL import Image

    with atomic_write(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


class PngWriter:
    """Writes PNGs in threads (zlib releases the GIL) so encoding keeps up with a GPU, at most a few per thread
    queued. On an exception (Ctrl-C included) queued files are dropped and the ones being written finish:
    every file that exists afterwards is complete. `written` counts them."""

    def __init__(self, threads: int = min(8, os.cpu_count() or 1)) -> None:
        self.threads, self.written = threads, 0

    def __enter__(self) -> PngWriter:
        self._pool = ThreadPoolExecutor(self.threads)
        self._pending: deque = deque()
        return self

    def submit(self, array: np.ndarray, path: Path) -> None:
        while len(self._pending) >= 4 * self.threads:
            self._pending[0].result()  # popped only once done, so __exit__ counts it if interrupted here
            self._pending.popleft()
            self.written += 1
        self._pending.append(self._pool.submit(write_png, array, path))

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)
        done = [f for f in self._pending if not f.cancelled()]
        self.written += sum(f.exception() is None for f in done)
        if exc_type is None:
            for f in done:
                f.result()  # raises a write error (disk full, ...)


def _hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def save_samples(gen: TrainedGenerator, indices: Sequence[int], seed: int, res: int, *, folder: Path | None = None,
                 npz: Path | None = None, grid: Path | None = None, cols: int | None = None,
                 on_progress=None) -> None:
    """Images `indices` of set `seed` as `folder`/NNNNNN.png (NNNNNN = image number), one `npz` (arr_0: uint8
    NHWC, indices, seed) and/or one `grid` PNG. Raises Interrupted on Ctrl-C."""
    keep: list[torch.Tensor] = []
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    writer = PngWriter()
    try:
        with writer:
            done = 0
            for images in gen.generate(indices, seed, res):
                if folder is not None:
                    for i, array in zip(indices[done:done + len(images)], _hwc(images)):
                        writer.submit(array, folder / f"{i:06d}.png")
                if npz is not None or grid is not None:
                    keep.append(images)
                done += len(images)
                if on_progress is not None:
                    on_progress(len(images))
    except KeyboardInterrupt:
        raise Interrupted(writer.written) from None
    if npz is not None:
        with atomic_write(npz) as tmp, open(tmp, "wb") as f:
            np.savez(f, arr_0=_hwc(torch.cat(keep)), indices=np.asarray(indices, dtype=np.int64), seed=seed)
    if grid is not None:
        save_grid(torch.cat(keep), grid, grid_cols(len(indices), cols))


def walk_output(out: str, overwrite: bool) -> tuple[Path, str]:
    """(path, kind) of `progan interpolate --out`: 'gif', 'mp4' or 'folder' (no suffix or a trailing /)."""
    path = Path(out)
    if out.endswith(("/", os.sep)) or not path.suffix or path.is_dir():
        kind = "folder"
    elif path.suffix.lower() in (".gif", ".mp4"):
        kind = path.suffix.lower()[1:]
    else:
        raise UsageError(f"--out {out}: unknown extension {path.suffix!r}; use .gif, .mp4 or a folder for "
                         "numbered PNG frames")
    if kind == "mp4":
        try:
            import av  # noqa: F401  (checked now, before any work)
        except ImportError:
            raise UsageError(f"--out {out}: writing .mp4 needs PyAV, an optional extra: {VIDEO_HINT}") from None
    if kind != "folder" and path.is_dir():
        raise UsageError(f"--out {out} is a folder, not a .{kind} file")
    check_new(path, overwrite)
    return path, kind


def walk_latents(gen: TrainedGenerator, seed: int, cells: int, *, keyframes: Sequence[int] = (0, 1, 2, 3),
                 frames: int = 30, smooth: float | None = None, seconds: float = 60.0,
                 fps: int = 30) -> torch.Tensor:
    """(frames, cells, latent_size) latents of a walk. Through `keyframes`, `frames` slerp steps each, cell c
    walking images `keyframes` of set seed + c (so cell 0 is the plain walk); or, with `smooth` (seconds), the
    official smoothed random walk of `seconds` at `fps`."""
    if smooth is not None:
        return smooth_walk(seed, int(np.rint(seconds * fps)), cells, gen.latent_size, smooth * fps)
    if seed + cells - 1 > MAX_SEED:
        raise UsageError(f"--seed {seed}: a walk of {cells} cells uses sets {seed}..{seed + cells - 1}, past "
                         f"{MAX_SEED}")
    keys = torch.stack([latents(seed + c, keyframes, gen.latent_size) for c in range(cells)], dim=1)
    return keyframe_walk(keys, frames)


def walk_frames(gen: TrainedGenerator, walk: torch.Tensor, res: int, cols: int, zoom: int = 1) -> Iterator[np.ndarray]:
    """HWC uint8 frames of a walk, its cells tiled `cols` across, enlarged `zoom` times by repeating pixels
    (the official `image_zoom`), rendered a forward pass at a time."""
    for cells in rebatch(gen.render(walk.reshape(-1, walk.shape[2]), res), walk.shape[1]):
        yield grid_image(cells, cols).repeat(zoom, axis=0).repeat(zoom, axis=1)


def save_walk(frames: Iterator[np.ndarray], path: Path, kind: str, fps: int, on_progress=None) -> None:
    """Write frames as a GIF (Pillow; its timing is in 1/100 s), an H.264 MP4 (PyAV) or a folder of numbered
    PNGs. Raises Interrupted on Ctrl-C (a GIF or MP4 is then not written at all)."""

    def counted() -> Iterator[np.ndarray]:
        for frame in frames:
            yield frame
            if on_progress is not None:
                on_progress(1)

    writer = PngWriter()
    try:
        if kind == "folder":
            path.mkdir(parents=True, exist_ok=True)
            with writer:
                for i, frame in enumerate(counted()):
                    writer.submit(frame, path / f"{i:06d}.png")
        elif kind == "gif":
            from PIL import Image

            stream = (Image.fromarray(frame) for frame in counted())
            with atomic_write(path) as tmp:
                next(stream).save(tmp, format="GIF", save_all=True, append_images=stream, loop=0,
                                  duration=10 * max(1, round(100 / fps)))  # GIF stores 1/100 s
        else:
            _save_mp4(counted(), path, fps)
    except KeyboardInterrupt:
        raise Interrupted(writer.written) from None


def _save_mp4(frames: Iterator[np.ndarray], path: Path, fps: int) -> None:
    import av

    with atomic_write(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
