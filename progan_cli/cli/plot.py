"""`progan plot RUN [RUN2 ...]`: training curves of one or more runs to a PNG/SVG/PDF, or `--json`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from progan_cli.cli.common import print_json


def plot(
    runs: list[Path] = typer.Argument(..., help="Run folders (or their log.jsonl) from `progan train`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Figure file; .png, .svg or .pdf picks the "
                                       "format [default: RUN/curves.png for one run, curves.png here for several]."),
    json_out: bool = typer.Option(False, "--json", help="Print the series and phases as JSON instead "
                                  "(needs no matplotlib)."),
) -> None:
    """Plot losses, D scores, gradient penalty, images/s and metrics over kimg; phases shaded, fades marked."""
    from progan_cli.plot import check_figure, read_runs, render

    if not json_out:
        out = check_figure(out if out is not None else (runs[0] if len(runs) == 1 and runs[0].is_dir()
                                                        else Path.cwd()) / "curves.png")
    curves = read_runs(runs)
    if json_out:
        print_json({"runs": [c.to_json() for c in curves]})
        return
    print(render(curves, out))


def register(app: typer.Typer) -> None:
    app.command()(plot)
