"""Pieces every command shares: the stderr console, JSON output, shared options, the --grid COLSxROWS parser."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from progan_cli.devices import DEVICE_HELP

# Progress and logs go to stderr so that stdout carries only results (shell pipelines stay clean).
err_console = Console(stderr=True)


# Options several commands share.
Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP + ".")]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", help="torch CPU threads [default: the cores (train: less its DataLoader workers)].")]


def setup_device(device: str, threads: int | None, reserved: int = 0):
    """`--device` as a checked torch device, with torch's CPU threads set from `--threads` (see
    devices.use_threads; `reserved`: cores other processes of the command keep busy)."""
    from progan_cli.devices import resolve_device, use_threads

    dev = resolve_device(device)
    use_threads(threads, reserved)
    return dev


def print_json(data: Any) -> None:
    """One JSON document on stdout."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def parse_grid(text: str) -> tuple[int, int]:
    """`--grid COLSxROWS` (train's sample grids, interpolate's walks) as (cols, rows)."""
    from progan_cli.errors import UsageError

    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--grid {text!r}: give COLSxROWS, e.g. 8x4") from None
    if cols < 1 or rows < 1:
        raise UsageError(f"--grid {text!r}: columns and rows must be positive")
    return cols, rows
