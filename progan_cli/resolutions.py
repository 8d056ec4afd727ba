"""The rule every image side in progan obeys: a power of two (4, 8, ..., 1024 for networks and data files).

The networks double the side block by block from 4x4, so a side that is not a power of two has no block; the
official code asserts `resolution == 2**resolution_log2`. This module imports nothing, so every layer (config,
data, networks, metrics) can ask it without an import cycle; each caller keeps its own error and message.
"""

from __future__ import annotations

MIN_RESOLUTION = 4
MAX_RESOLUTION = 1024


def is_resolution(res: int, lo: int = MIN_RESOLUTION, hi: int | None = MAX_RESOLUTION) -> bool:
    """Whether `res` is a power of two with lo <= res <= hi (no upper bound when hi is None)."""
    return res >= lo and (hi is None or res <= hi) and not res & (res - 1)
