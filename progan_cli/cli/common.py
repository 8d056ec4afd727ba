"""Pieces every command shares: the stderr console, JSON output, the --grid COLSxROWS parser."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

# Progress and logs go to stderr so that stdout carries only results (shell pipelines stay clean).
err_console = Console(stderr=True)


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
