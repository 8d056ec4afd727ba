"""Fetching a file over HTTP(S) into place, checked, or not at all.

`download` streams the body into a temporary file beside the destination (files.atomic_write) while hashing
it, checks the byte count against Content-Length and the sha256 (the full digest, or a prefix of 8 or more
hex digits as torch.hub checks), and only then renames it into place. Any failure, Ctrl-C included, leaves
no file at the destination and no temporary file; the user sees one line (a DataError). Standard library
only (urllib): no new dependency. Every socket operation has a timeout, so nothing hangs: connecting and
each read give up after `timeout` seconds of silence.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from progan_cli.errors import DataError, UsageError
from progan_cli.files import atomic_write

CHUNK = 1 << 20
MIN_PREFIX = 8  # hex digits; torch.hub's file names carry 8


class UnreachableError(DataError):
    """The host could not be reached (no internet, DNS failure, refused or timed-out connection)."""

    def __init__(self, message: str, host: str):
        super().__init__(message)
        self.host = host


def check_sha256(sha256: str) -> str:
    """The expected digest, lower case: 8 to 64 hex digits (a prefix of the full digest), else a UsageError."""
    text = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{%d,64}" % MIN_PREFIX, text):
        raise UsageError(f"sha256 {sha256!r}: give the file's sha256 as hex, the full 64 digits or at least the "
                         f"first {MIN_PREFIX}")
    return text


def digest_matches(digest: str, expected: str) -> bool:
    """Whether the full hex `digest` is `expected` or starts with it (a prefix of 8 digits or more)."""
    return digest.lower().startswith(check_sha256(expected))


def file_sha256(path: Path | str) -> str:
    """The hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def host_of(url: str) -> str:
    """host[:port] of a URL, without any user:password@."""
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host


def download(url: str, dest: Path | str, sha256: str | None, *, timeout: float = 30,
             on_progress: Callable[[int, int | None], None] | None = None, by_hand: str | None = None) -> Path:
    """Fetch `url` to `dest` (its folder is made once the server answers), checked against Content-Length and
    `sha256`; returns dest.

    sha256: the full hex digest or a prefix of at least 8 digits; None skips the check (the byte count is
    still checked when the server sends one). timeout: seconds allowed for connecting and for each read.
    on_progress(bytes so far, total or None) after each chunk. by_hand: what to tell the user when the host
    cannot be reached (e.g. where to put the file); by default, to fetch the URL another way and put it at
    dest. Raises UnreachableError or DataError (one line each); dest is then untouched (an older file there
    stays) and no temporary file is left.
    """
    dest = Path(dest)
    expected = check_sha256(sha256) if sha256 is not None else None
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise UsageError(f"{url}: only http:// and https:// URLs can be downloaded")
    host = host_of(url)
    hint = by_hand or f"fetch {url} another way and put it at {dest}"

    from progan_cli import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"progan/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:  # raised while connecting (or sending the request)
        raise UnreachableError(f"cannot reach {host} ({_why(exc.reason, timeout)}): {hint}", host) from None
    except (OSError, http.client.HTTPException) as exc:  # connected, but no proper answer
        raise UnreachableError(f"no answer from {host} ({_why(exc, timeout)}): {hint}", host) from None

    with response:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot make the folder {dest.parent}: {exc.strerror or exc}") from None
        length = response.headers.get("Content-Length")
        total = int(length) if length is not None and length.isdigit() else None
        done = 0
        h = hashlib.sha256()
        with atomic_write(dest) as tmp:
            try:
                with open(tmp, "wb") as f:
                    while block := response.read(CHUNK):
                        h.update(block)
                        f.write(block)
                        done += len(block)
                        if on_progress is not None:
                            on_progress(done, total)
            except (http.client.HTTPException, ssl.SSLError, socket.timeout, ConnectionError) as exc:
                raise DataError(f"{url}: the transfer broke off after {_of(done, total)} "
                                f"({_why(exc, timeout)}); nothing was kept") from None
            except OSError as exc:  # the disk side: full, read-only, permissions
                raise DataError(f"cannot write {dest}: {exc.strerror or exc}") from None
            if total is not None and done != total:
                raise DataError(f"{url}: the transfer broke off after {_of(done, total)}; nothing was kept")
            got = h.hexdigest()
            if expected is not None and not got.startswith(expected):
                want = expected if len(expected) == 64 else f"{expected}... (a prefix)"
                raise DataError(f"{url}: wrong sha256: expected {want}, got {got}; nothing was kept")
    return dest


def _of(done: int, total: int | None) -> str:
    return f"{done} of {total} bytes" if total is not None else f"{done} bytes"


def _why(reason: object, timeout: float) -> str:
    """A few words for a network failure."""
    if isinstance(reason, socket.gaierror):
        return "no address for it: no internet, or a wrong host name"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError
        return f"no answer in {timeout:g} s"
    if isinstance(reason, http.client.IncompleteRead):
        return "the connection closed early"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the server closed the connection"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
