"""`progan demo`: the whole toolchain on images that ship with scikit-image, offline, in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from progan_cli.cli.common import Device, Threads, err_console, print_json, setup_device


def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="A new folder for everything [progan-demo here, "
                                       "or progan-demo-2, ... when taken]."),
    quick: bool = typer.Option(False, "--quick", help="Train a third as long and score fewer images (CI)."),
    device: Device = "auto",
    threads: Threads = None,
    json_out: bool = typer.Option(False, "--json", help="Print the table and the files as JSON."),
) -> None:
    """Prep (face detection, --crop square), train 4x4 -> 16x16, sample, interpolate and score, end to end."""
    from progan_cli.demo import run_demo

    def say(text: str) -> None:
        err_console.print(text, soft_wrap=True, highlight=False)

    def on_tick(p, line: dict | None) -> None:  # the training loop's progress hook: one line per tick
        if line is not None:
            say(f"  tick {line['tick']}: kimg {line['kimg']:.1f}/{p.end_kimg:g}  {line['res']}x{line['res']} "
                f"{line['phase']}  {line['img_per_s']:.0f} img/s  loss_D {line['loss_D']:.2f}")

    dev = setup_device(device, threads)
    result = run_demo(out, quick=quick, device=str(dev), train_threads=threads or 1, say=say, on_progress=on_tick)
    if json_out:
        print_json({"folder": str(result.folder), "table": dict(result.rows), "swd": result.swd,
                    "fid": result.fid, "files": {k: str(v) for k, v in result.files.items()},
                    "seconds": result.seconds})
        return
    width = max(len(what) for what, _ in result.rows)
    print(f"progan demo: {result.folder}")
    for what, value in result.rows:
        print(f"  {what:<{width}}  {value}")
    print("files:")
    width = max(len(what) for what in result.files)
    for what, path in result.files.items():
        print(f"  {what:<{width}}  {path}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
