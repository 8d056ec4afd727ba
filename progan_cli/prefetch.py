"""Decoding files in threads, one batch ahead of their consumer, with memory bounded to two batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch_batches(fn: Callable[[T], R], items: Sequence[T], batch_size: int, workers: int) -> Iterator[list[R]]:
    """`[fn(x) for x in batch]` for each consecutive batch of `items`, the next batch running in threads
    while the caller works on the current one (PIL decoding releases the GIL).

    `workers=0` runs `fn` in the caller's thread, with no read-ahead. Closing the iterator early (an
    exception or a signal in the caller) cancels what has not started yet.
    """
    if workers == 0:
        for start in range(0, len(items), batch_size):
            yield [fn(x) for x in items[start:start + batch_size]]
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead: list = []
        try:
            for start in range(0, len(items) + batch_size, batch_size):
                current, ahead = ahead, [pool.submit(fn, x) for x in items[start:start + batch_size]]
                if current:
                    yield [f.result() for f in current]
        finally:
            for f in ahead:
                f.cancel()
