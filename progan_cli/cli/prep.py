"""`progan prep SRC`: a folder of photos (or a list on stdin) into a multi-resolution pyramid file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from progan_cli.cli.common import err_console, print_json
from progan_cli.devices import resolve_device


def prep(
    src: str = typer.Argument(..., help="Folder of photos (searched recursively), or '-' to read paths from stdin."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file [default: <folder name>.h5 here]."),
    target: int = typer.Option(128, help="Largest resolution: a power of two from 4 to 1024."),
    crop: str = typer.Option("align", help="align (rotated by landmarks), box (square around the detection) "
                             "or center (standard CelebA crop, no detection)."),
    faces: str = typer.Option("largest", help="largest: one face per photo; all: every face found."),
    min_face: int = typer.Option(20, help="Smallest face to detect and keep, in pixels."),
    min_confidence: float = typer.Option(0.8, help="Smallest detector confidence to keep a face (mtcnn 1.0 default)."),
    margin: float = typer.Option(0.25, help="--crop box: grow the box's longer side by this fraction."),
    compression: Optional[str] = typer.Option(None, help="HDF5 compression of the levels: gzip or lzf."),
    batch: int = typer.Option(32, help="Photos per detection batch (also the unit of resuming)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    workers: int = typer.Option(2, help="Threads decoding photos."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file (once the new one is complete)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Detect faces (MTCNN), crop them and write a multi-resolution HDF5 pyramid; resumes when re-run."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from progan_cli.data.prep import PrepOptions, check_output, default_output, list_sources, run_prep

    options = PrepOptions(target=target, crop=crop, faces=faces, min_face=min_face,
                          min_confidence=min_confidence, margin=margin, batch=batch, compression=compression)
    options.validate()
    sources = list_sources(src)
    out = check_output(out if out is not None else default_output(src), overwrite)
    dev = resolve_device(device) if crop != "center" else "cpu"
    progress = Progress(
        TextColumn("prep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]:.1f} img/s"),
        TextColumn("faces {task.fields[faces]}  skipped {task.fields[skipped]}"), TimeRemainingColumn(),
        console=err_console, transient=False,
    )
    with progress:
        task = progress.add_task("prep", total=len(sources), rate=0.0, faces=0, skipped=0)
        start = {"done": None}

        def on_batch(done: int, images: int, skipped: int) -> None:
            if start["done"] is None:  # what a resumed run already had does not count towards the rate
                start["done"] = done
            elapsed = progress.tasks[0].elapsed or 0.0
            rate = (done - start["done"]) / elapsed if elapsed > 0 else 0.0
            progress.update(task, completed=done, rate=rate, faces=images, skipped=skipped)

        try:
            summary = run_prep(sources, out, options, device=dev, workers=workers, overwrite=overwrite,
                               on_batch=on_batch)
        except KeyboardInterrupt:
            progress.stop()
            err_console.print("interrupted: run the same command again to continue where it stopped")
            raise typer.Exit(130)
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary.skipped.items()) or "none"
    err_console.print(f"{summary.images} images from {summary.sources} photos in {summary.seconds:.1f} s "
                      f"({summary.photos_per_second:.1f} photos/s); skipped: {skipped}")
    if json_out:
        print_json({**asdict(summary), "photos_per_second": summary.photos_per_second})
    else:
        print(summary.out)


def register(app: typer.Typer) -> None:
    app.command()(prep)
