"""`progan prep SRC`: a folder of photos (or a list on stdin) into a multi-resolution pyramid file."""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from progan_cli.cli.common import Device, Threads, err_console, print_json, setup_device


def prep(
    src: str = typer.Argument(..., help="Folder of photos (searched recursively), or '-' to read paths from stdin."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file [default: <folder name>.h5 here]."),
    target: int = typer.Option(128, help="Largest resolution: a power of two from 4 to 1024."),
    crop: str = typer.Option("align", help="align (rotated by landmarks), box (square around the detection), "
                             "center (standard CelebA crop), square (largest centred square) or none (already "
                             "square images); the last three detect nothing."),
    faces: str = typer.Option("largest", help="largest: one face per photo; all: every face found."),
    min_face: int = typer.Option(20, help="Smallest face to detect and keep, in pixels."),
    min_confidence: float = typer.Option(0.8, help="Smallest detector confidence to keep a face (mtcnn 1.0 default)."),
    margin: float = typer.Option(0.25, help="--crop box: grow the box's longer side by this fraction."),
    upscale: bool = typer.Option(False, help="Keep crops smaller than --target (enlarged); without it they are "
                                 "left out, and refused on the first batch when most are."),
    max_padding: float = typer.Option(1.0, help="Leave out crops with more than this share of their area outside "
                                      "the photo (filled by reflection); 1 keeps all, 0.5 drops mostly-mirror crops."),
    compression: Optional[str] = typer.Option(None, help="HDF5 compression of the levels: gzip or lzf."),
    batch: int = typer.Option(32, help="Photos per detection batch (also the unit of resuming)."),
    device: Device = "auto",
    threads: Threads = None,
    workers: int = typer.Option(2, help="Threads decoding photos; 0 decodes in the main thread."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file (once the new one is complete) "
                                   "and an unfinished prep of it with other options."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Detect faces (MTCNN) or take squares, crop and write a multi-resolution HDF5 pyramid; resumes when re-run."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from progan_cli.data.prep import (
        Interrupted, PrepOptions, check_output, check_workers, default_output, list_sources, raise_on_signals,
        run_prep)

    with raise_on_signals():
        try:
            options = PrepOptions(target=target, crop=crop, faces=faces, min_face=min_face,
                                  min_confidence=min_confidence, margin=margin, batch=batch,
                                  compression=compression, upscale=upscale, max_padding=max_padding)
            options.validate()
            check_workers(workers)
            out = check_output(out if out is not None else default_output(src), overwrite)
            sources = list_sources(src)
            dev = setup_device(device, threads)  # imports torch: after the checks that need none
            progress = Progress(
                TextColumn("prep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]:.1f} photos/s"),
                TextColumn("images {task.fields[images]}  skipped {task.fields[skipped]}"), TimeRemainingColumn(),
                console=err_console, transient=False,
            )
            task = progress.add_task("prep", total=len(sources), rate=0.0, images=0, skipped=0)
            first = {"done": None}

            def on_batch(done: int, images: int, skipped: int) -> None:
                if first["done"] is None:  # the bar starts once every up-front check passed
                    first["done"] = done  # what a resumed run already had does not count towards the rate
                    progress.start()
                elapsed = progress.tasks[0].elapsed or 0.0
                rate = (done - first["done"]) / elapsed if elapsed > 0 else 0.0
                progress.update(task, completed=done, rate=rate, images=images, skipped=skipped)

            try:
                summary = run_prep(sources, out, options, device=dev, workers=workers, overwrite=overwrite,
                                   command="progan " + shlex.join(sys.argv[1:]), on_batch=on_batch)
            finally:
                if first["done"] is not None:
                    progress.stop()
        except Interrupted as stop:
            err_console.print(stop.advice(), highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(stop.exit_code) from None
    err_console.print(summary.describe(options), highlight=False, markup=False, soft_wrap=True)
    if json_out:
        print_json({**asdict(summary), "photos_per_second": summary.photos_per_second})
    else:
        print(summary.out)


def register(app: typer.Typer) -> None:
    app.command()(prep)
