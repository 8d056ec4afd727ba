"""Decoding files in threads, one batch ahead of their consumer, with memory bounded to two batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch_batches(fn: Callable[[T], R], items: Sequence[T], batch_size: int, workers: int) -> Iterator[list[R]]:
    """`[fn(x) for x in batch]` for each consecutive batch of `items`, the next batch running in threads
    while the caller works on the current one (PIL decoding releases the GIL)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = None
        for start in range(0, len(items) + batch_size, batch_size):
            chunk = items[start:start + batch_size]
            nxt = [pool.submit(fn, x) for x in chunk] if chunk else None
            if pending is not None:
                yield [f.result() for f in pending]
            pending = nxt
