"""`progan sample`, `progan interpolate`, `progan export`: what people do with a trained generator.

Each takes a run folder (its newest checkpoint), a checkpoint file, an export (.safetensors) or a published
network (an official NVIDIA pickle, a pytorch_GAN_zoo checkpoint); results' paths go to stdout, progress to
stderr. The core is progan_cli.sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from progan_cli.cli.common import Device, Threads, err_console, parse_grid, setup_device

Source = Annotated[Path, typer.Argument(help="A run folder (its newest checkpoint), a checkpoint file, an export "
                                        "from `progan export` (.safetensors), an official NVIDIA ProGAN pickle or "
                                        "a pytorch_GAN_zoo PGAN checkpoint.")]
Seed = Annotated[int, typer.Option("--seed", help="The set of images: image i of set S is always the same image.")]
Res = Annotated[Optional[int], typer.Option("--res", help="Any resolution the run has grown to [the highest one "
                                            "it renders fully].")]
Raw = Annotated[bool, typer.Option("--raw", help="The trained G instead of its moving average G_ema.")]
Precision = Annotated[str, typer.Option("--precision", help="fp32, or bf16 (autocast; for GPUs).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty folder or over a file "
                                         "(files of other names are kept).")]


def sample(
    source: Source,
    n: Annotated[Optional[int], typer.Option("--n", help="Make images 0..N-1 of the set [16].")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Make these images of the set instead, e.g. "
                                                 "3,17,100-120.")] = None,
    seed: Seed = 0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="A folder for numbered PNGs (000017.png is "
                                                "image 17), or FILE.npz for one uint8 NHWC array.")] = None,
    overwrite: Overwrite = False,
    fmt: Annotated[Optional[str], typer.Option("--format", help="png or npz [npz when --out ends in .npz].")] = None,
    grid: Annotated[Optional[Path], typer.Option("--grid", help="One contact sheet PNG of the images (with or "
                                                 "without --out).")] = None,
    cols: Annotated[Optional[int], typer.Option("--cols", help="Images across the --grid [square].")] = None,
    res: Res = None,
    raw: Raw = False,
    device: Device = "auto",
    threads: Threads = None,
    precision: Precision = "fp32",
) -> None:
    """Write images of a trained generator: numbered PNGs, an .npz array or a contact sheet."""
    from progan_cli import sampling

    indices = sampling.pick_images(n, seeds, seed)
    folder, npz = sampling.sample_outputs(out, fmt, grid, cols, overwrite)
    gen, res = _load(source, device, threads, raw, precision, res)
    if grid is not None:
        sampling.check_grid_size(len(indices), sampling.grid_cols(len(indices), cols), res)
    _say_what(gen, f"{len(indices)} images of set {seed}", res)
    try:
        with _progress("sampling", len(indices)) as advance:
            sampling.save_samples(gen, indices, seed, res, folder=folder, npz=npz, grid=grid, cols=cols,
                                  on_progress=advance)
    except sampling.Interrupted as stop:
        _stopped(stop, folder)
    for path in (folder, npz, grid):
        if path is not None:
            print(path)


def interpolate(
    source: Source,
    out: Annotated[str, typer.Option("--out", "-o", help="walk.gif, walk.mp4 (needs the video extra) or a folder "
                                     "for numbered PNG frames.")],
    overwrite: Overwrite = False,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Keyframes: image numbers of the set, joined by "
                                                 "slerp and looping back to the first [0-3].")] = None,
    seed: Seed = 0,
    frames: Annotated[Optional[int], typer.Option("--frames", help="Frames from one keyframe to the next "
                                                  "[30].")] = None,
    fps: Annotated[int, typer.Option("--fps", help="Frames per second.")] = 30,
    grid: Annotated[str, typer.Option("--grid", help="COLSxROWS walks side by side; cell c walks set SEED+c.")] = "1x1",
    smooth: Annotated[Optional[float], typer.Option("--smooth", help="Instead of keyframes, the official random walk "
                                                    "smoothed over SIGMA seconds (1 in the paper's video).")] = None,
    seconds: Annotated[Optional[float], typer.Option("--seconds", help="Length of a --smooth walk [60].")] = None,
    zoom: Annotated[int, typer.Option("--zoom", help="Enlarge frames this many times (pixels repeated).")] = 1,
    raw: Raw = False,
    res: Res = None,
    device: Device = "auto",
    threads: Threads = None,
    precision: Precision = "fp32",
) -> None:
    """A walk through the latent space as a GIF, an MP4 or PNG frames."""
    from progan_cli import sampling
    from progan_cli.errors import UsageError

    sampling.check_seed(seed)
    path, kind = sampling.walk_output(out, overwrite)
    cols, rows = parse_grid(grid)
    if smooth is None:
        if seconds is not None:
            raise UsageError("--seconds sets the length of a --smooth walk; a keyframe walk lasts keyframes x --frames")
        keyframes = sampling.parse_seeds(seeds or "0-3")
        if len(keyframes) < 2 or (frames is not None and frames < 1):
            raise UsageError("a walk needs at least two --seeds keyframes and --frames of 1 or more")
    elif seeds is not None or frames is not None:
        raise UsageError("--smooth draws its own random latents: leave out --seeds and --frames (use --seconds)")
    elif smooth <= 0 or (seconds is not None and seconds * fps < 1):
        raise UsageError("--smooth takes a positive SIGMA in seconds, and --seconds must make at least one frame")
    if fps < 1 or zoom < 1:
        raise UsageError("--fps and --zoom take whole numbers of 1 or more")
    gen, res = _load(source, device, threads, raw, precision, res)
    walk = (sampling.walk_latents(gen, seed, cols * rows, smooth=smooth, seconds=seconds or 60.0, fps=fps)
            if smooth is not None else
            sampling.walk_latents(gen, seed, cols * rows, keyframes=keyframes, frames=frames or 30))
    _say_what(gen, f"{len(walk)} frames of {cols}x{rows} walks", res)
    try:
        with _progress("rendering", len(walk)) as advance:
            sampling.save_walk(sampling.walk_frames(gen, walk, res, cols, zoom), path, kind, fps,
                               on_progress=advance)
    except sampling.Interrupted as stop:
        _stopped(stop, path if kind == "folder" else None)
    print(path)


def export(
    source: Source,
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write, NAME.safetensors.")],
    raw: Raw = False,
    overwrite: Overwrite = False,
) -> None:
    """A generator-only file (weights + config, safetensors: loads without running code) to share or load."""
    from progan_cli import sampling
    from progan_cli.errors import UsageError
    from progan_cli.formats import EXPORT_SUFFIX

    if out.suffix != EXPORT_SUFFIX:
        raise UsageError(f"--out {out}: an export is a {EXPORT_SUFFIX} file; end its name in that")
    sampling.check_new(out, overwrite)
    gen = sampling.load_generator(source, "cpu", raw=raw)
    path = sampling.export_generator(gen, out)
    err_console.print(f"{gen.label} at {gen.res}x{gen.res}: {path.stat().st_size / 1e6:.1f} MB", soft_wrap=True)
    print(path)


def _load(source: Path, device: str, threads: int | None, raw: bool, precision: str, res: int | None):
    """The generator on its device and the resolution to render, checked against how far the run grew."""
    from progan_cli.sampling import load_generator

    gen = load_generator(source, setup_device(device, threads), raw=raw, precision=precision)
    return gen, gen.check_res(res)


def _say_what(gen, what: str, res: int) -> None:
    err_console.print(f"{what} at {res}x{res} from {gen.label} on {gen.device}, {gen.precision}", soft_wrap=True)


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A stderr progress bar (shown only on a terminal) and the callback that advances it."""
    from rich.progress import Progress

    if not err_console.is_terminal:
        yield lambda k: None
        return
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda k: bar.advance(task, k)


def _stopped(stop, folder: Path | None) -> NoReturn:
    """Ctrl-C: say what is on disk (complete files only) and exit 130 like an interrupted shell command."""
    kept = f"the {stop.written} files in {folder} are complete" if folder is not None else "nothing was written"
    err_console.print(f"interrupted: {kept}", soft_wrap=True)
    raise typer.Exit(130)


def register(app: typer.Typer) -> None:
    app.command()(sample)
    app.command()(interpolate)
    app.command()(export)
