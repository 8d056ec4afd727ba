"""`progan info DATA.h5`: what a pyramid file holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from progan_cli.cli.common import print_json


def info(
    path: Path = typer.Argument(..., help="A pyramid file written by `progan prep`."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    list_skipped: bool = typer.Option(False, "--skipped", help="Also list the photos that gave no image."),
) -> None:
    """Print a pyramid file's levels, image count, crop settings and skipped photos."""
    from progan_cli.data.pyramid import Pyramid

    with Pyramid(path) as pyr:
        attrs = pyr.attrs
        skipped = list(pyr.skipped())
        levels = {res: {"shape": list(pyr.level(res).shape), "chunks": list(pyr.level(res).chunks or []),
                        "compression": pyr.level(res).compression} for res in pyr.resolutions}
    if json_out:
        print_json({"path": str(path), "attrs": attrs, "levels": levels,
                    "skipped": [{"source": s, "reason": r} for s, r in skipped]})
        return
    print(f"{path}: {attrs['count']} images, {attrs['target']}x{attrs['target']} target, "
          f"levels {', '.join(map(str, levels))}")
    for key in sorted(k for k in attrs if k not in ("count", "target", "resolutions")):
        print(f"  {key}: {attrs[key]}")
    reasons = Counter(r for _, r in skipped)
    print(f"  skipped photos: {len(skipped)}" + (f" ({dict(reasons)})" if skipped else ""))
    if list_skipped:
        for source, reason in skipped:
            print(f"    {reason}\t{source}")


def register(app: typer.Typer) -> None:
    app.command()(info)
