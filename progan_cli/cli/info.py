"""`progan info PATH`: what a pyramid file or a network file (run, checkpoint, export, published network) holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from progan_cli.cli.common import print_json

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def info(
    path: Path = typer.Argument(..., help="A pyramid file written by `progan prep`, or a network: a run folder, a "
                                "checkpoint, an export, an official NVIDIA pickle or a pytorch_GAN_zoo checkpoint."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    list_skipped: bool = typer.Option(False, "--skipped", help="Pyramids: also list the photos that gave no image."),
) -> None:
    """Print what a pyramid holds (levels, count, crop settings, skipped photos) or what a network file holds
    (kind, resolution, widths, how far it grew, where its weights came from and their licence)."""
    if _is_pyramid(path):
        _pyramid_info(path, json_out, list_skipped)
    else:
        _network_info(path, json_out)


def _is_pyramid(path: Path) -> bool:
    from progan_cli.data.pyramid import PYRAMID_SUFFIXES

    if path.suffix.lower() in PYRAMID_SUFFIXES:
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


def _pyramid_info(path: Path, json_out: bool, list_skipped: bool) -> None:
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


def _network_info(path: Path, json_out: bool) -> None:
    from progan_cli.formats import load_networks

    about = load_networks(path).summary()
    if json_out:
        print_json(about)
        return
    res, top = about["resolution"], about["grown_to"]
    growth = (f"grown to {top}x{top}" + (f", fading in at alpha {about['alpha']:.3f}" if about["alpha"] < 1 else "")
              if (top, about["alpha"]) != (res, 1.0) else "fully grown")
    print(f"{about['path']}: {about['kind']}, {res}x{res} ({growth})")
    print(f"  origin: {about['origin']}")
    print(f"  licence: {about['licence'] or 'not recorded'}")
    print(f"  networks: " + ", ".join(f"{name} ({count:,} parameters)" for name, count in about["networks"].items()))
    print(f"  renders: {', '.join(map(str, about['renders']))}")
    print(f"  images shown: {'not recorded' if about['kimg'] is None else format(about['kimg'], 'g') + ' kimg'}")
    print(f"  latent size: {about['latent_size']}; widths {', '.join(map(str, about['widths']))} "
          f"(fmap_base {about['fmap_base']}, fmap_max {about['fmap_max']})")
    mbstd = (f"minibatch stddev over groups of {about['mbstd_group_size']} ({about['mbstd_variant']} formula)"
             if about["mbstd_group_size"] > 1 else "no minibatch stddev")
    print(f"  D: {mbstd}, {'conv and pool fused' if about['d_fused'] else 'pool after the activation'}; "
          f"G: stem bias per {about['stem_bias']}")


def register(app: typer.Typer) -> None:
    app.command()(info)
