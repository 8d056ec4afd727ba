"""`progan download NAME | URL --sha256 HEX | --list`: published ProGANs (and any checked file) into the cache.

The path of the file goes to stdout, progress (a bar, on a terminal) and notes to stderr. The catalogue is
progan_cli.pretrained; the transfer, checks and atomic rename are progan_cli.download.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Annotated, Optional
from urllib.parse import unquote, urlsplit

import typer

from progan_cli.cli.common import err_console, print_json


def download(
    source: Annotated[Optional[str], typer.Argument(
        metavar="[NAME|URL]", help="A network of the catalogue (`--list` shows them; any case), or an http(s) URL "
        "(then --sha256 is required).")] = None,
    sha256: Annotated[Optional[str], typer.Option(
        "--sha256", help="The URL's expected sha256: 64 hex digits, or a prefix of 8 or more.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write here (a file, or a folder to put it in) [the cache: $PROGAN_CACHE/networks, "
        "else ~/.cache/progan/networks].")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a file at --out whose sha256 is not the expected one.")] = False,
    list_all: Annotated[bool, typer.Option("--list", help="List the published networks and whether each is "
                                           "cached.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the list or the result as JSON.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the server to connect or to "
                                           "send more.")] = 30.0,
) -> None:
    """Fetch a published ProGAN (or any file, checked by its sha256) into progan's cache; print its path."""
    from progan_cli import pretrained
    from progan_cli.download import check_sha256
    from progan_cli.errors import UsageError
    from progan_cli.files import cache_dir

    if list_all:
        if source is not None or sha256 is not None or out is not None:
            raise UsageError("--list takes no NAME, URL, --sha256 or --out")
        _list(json_out)
        return
    if source is None:
        raise UsageError("give a NAME (`progan download --list` shows them), a URL with --sha256, or --list")
    if timeout <= 0:
        raise UsageError(f"--timeout {timeout:g}: give a positive number of seconds")

    if "://" in source:
        if urlsplit(source).scheme.lower() not in ("http", "https"):
            raise UsageError(f"{source}: only http:// and https:// URLs can be downloaded")
        if sha256 is None:
            raise UsageError(f"{source}: give the file's --sha256 (64 hex digits, or at least the first 8) so "
                             "what arrives can be checked")
        url, expected, name = source, check_sha256(sha256), None
        file = PurePosixPath(unquote(urlsplit(url).path)).name
        if out is None or out.is_dir():
            if file in ("", ".", ".."):
                raise UsageError(f"{url} names no file: give --out FILE")
        dest = (out / file if out.is_dir() else out) if out is not None else cache_dir() / "networks" / file
    else:
        entry = pretrained.find(source)
        if sha256 is not None:
            raise UsageError(f"{entry.name} has its checksum in the catalogue; --sha256 is for URLs")
        if entry.url is None:
            _nvidia(entry, json_out)
            return
        url, expected, name = entry.url, entry.sha256, entry.name
        dest = (out / entry.file if out.is_dir() else out) if out is not None else pretrained.cached_path(entry)

    if dest.is_dir():
        raise UsageError(f"{dest} is a folder; give --out the file to write")
    if dest.is_file():
        from progan_cli.download import digest_matches, file_sha256

        if digest_matches(file_sha256(dest), expected):
            err_console.print(f"{dest} is already there (its sha256 matches {expected}); not fetched again",
                              soft_wrap=True, markup=False)
            _result(dest, url, name, fetched=False, json_out=json_out)
            return
        if out is not None and not overwrite:
            raise UsageError(f"{dest} exists and its sha256 is not {expected}; --overwrite replaces it")
        err_console.print(f"{dest} has the wrong sha256 (not {expected}); fetching it again",
                          soft_wrap=True, markup=False)

    from progan_cli.data.prep import Interrupted, raise_on_signals
    from progan_cli.download import download as fetch

    again = f" (then `progan download {name}` checks it)" if name else ""
    by_hand = f"download {url} on a machine with internet and put it at {dest}{again}"
    try:
        with raise_on_signals(), _progress(dest.name) as advance:  # Ctrl-C and SIGTERM alike: nothing kept
            fetch(url, dest, expected, timeout=timeout, on_progress=advance, by_hand=by_hand)
    except Interrupted as stop:
        err_console.print(f"{stop}: stopped; nothing was kept", soft_wrap=True)  # SIGINT or SIGTERM
        raise typer.Exit(stop.exit_code) from None
    _result(dest, url, name, fetched=True, json_out=json_out)


def _result(dest: Path, url: str, name: str | None, fetched: bool, json_out: bool) -> None:
    if json_out:
        print_json({"path": str(dest), "url": url, "name": name, "fetched": fetched, "bytes": dest.stat().st_size})
    else:
        print(dest)


def _nvidia(entry, json_out: bool) -> None:
    """NVIDIA's Drive folder allows no scripted download: say where to get the file and where to put it, unless a
    person already did (there is no published checksum to check it against)."""
    from progan_cli import pretrained
    from progan_cli.errors import DataError

    path = pretrained.cached_path(entry)
    if path.is_file():
        err_console.print(f"{path} is already there (NVIDIA publishes no checksum to check it against)",
                          soft_wrap=True, markup=False)
        _result(path, pretrained.NVIDIA_FOLDER, entry.name, fetched=False, json_out=json_out)
        return
    raise DataError(pretrained.how_to_get(entry))


def _list(json_out: bool) -> None:
    from progan_cli import pretrained
    from progan_cli.files import cache_dir

    rows = [(e, pretrained.cached_path(e)) for e in pretrained.CATALOGUE]
    if json_out:
        print_json({"cache": str(cache_dir() / "networks"), "nvidia_folder": pretrained.NVIDIA_FOLDER,
                    "networks": [{**{k: getattr(e, k) for k in e.__dataclass_fields__}, "path": str(path),
                                  "cached": path.is_file()} for e, path in rows]})
        return
    table = [("NAME", "SOURCE", "DATASET", "RES", "LICENCE", "CACHED")]
    table += [(e.name, e.source, e.dataset, str(e.resolution), e.licence, "yes" if path.is_file() else "no")
              for e, path in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    err_console.print(f"gan-zoo: `progan download NAME`. nvidia: by hand from {pretrained.NVIDIA_FOLDER} into "
                      f"{cache_dir() / 'networks'}", soft_wrap=True, markup=False)


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int | None], None]]:
    """A stderr byte-progress bar (shown only on a terminal) and the on_progress callback that moves it."""
    if not err_console.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def register(app: typer.Typer) -> None:
    app.command()(download)
