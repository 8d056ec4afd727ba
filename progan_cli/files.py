"""The ground floor every layer may import: atomic file writes (a reader never sees half a file, and a failed
write leaves nothing behind) and where progan keeps its cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "PROGAN_CACHE"


def cache_dir() -> Path:
    """$PROGAN_CACHE, else ~/.cache/progan: FID statistics (stats/), downloaded networks (networks/)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "progan")


@contextmanager
def atomic_write(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; write it, and on leaving it replaces `path` in one rename.

    On any exception (Ctrl-C included) the temporary file is removed and `path` keeps its old content. The
    temporary name holds the process id, so two processes writing the same file (a shared cache) never
    write into each other's temporary file. It ends in `.partial` for whoever looks at the folder.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
