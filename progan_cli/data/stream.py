"""The stream of real images a training run reads: which image comes at each position, on which rank.

The data order is a pure function of (seed, position): position p of the stream is image perm_e[p mod N] of
epoch e = p // N, mirrored by bit e[p mod N], both drawn from a generator seeded by (seed, e). A run resumed
at image `start` rebuilds the same stream from there, whatever the number of ranks or DataLoader workers.

A global minibatch is split over the ranks by stride (rank r takes positions r, r + world, ...), not in
contiguous halves: minibatch stddev groups sample i with the samples i mod (N / 4), so a strided split keeps
every group on one rank with exactly the members it has in a single process of the same global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from progan_cli.config import TrainConfig
from progan_cli.data.dataset import LevelDataset
from progan_cli.data.pyramid import Pyramid
from progan_cli.errors import DataError


def check_data(cfg: TrainConfig) -> dict[str, Any]:
    """Fail before any work when the pyramid cannot feed this run: missing, foreign, too small, levels lacking.

    Returns the data key every checkpoint stores: the file, its image count and the sha256 of its target
    level (stored by `progan prep`, so this reads no images).
    """
    with Pyramid(Path(cfg.data)) as pyr:
        if cfg.target > pyr.target:
            raise DataError(f"--target {cfg.target} is above the {pyr.target}x{pyr.target} images of {cfg.data}; "
                            f"pass --target {pyr.target} or smaller, or prep the photos again with --target "
                            f"{cfg.target}")
        for res in cfg.resolutions:
            pyr.level(res)  # DataError naming the missing level
        if len(pyr) == 0:
            raise DataError(f"{cfg.data} holds no images; prep a folder of photos first")
        return {"path": cfg.data, "count": len(pyr), "target_sha256": pyr.target_sha256}


def check_resumed_data(saved: dict[str, Any] | None, now: dict[str, Any], explicit: bool,
                       run_dir: Path) -> str | None:
    """A resumed run must go on with the images it was trained on (check_data's keys, then and now).

    Other images are refused unless DATA was given on the command line: then the user means it, and the
    returned warning says what changed. A checkpoint written before checkpoints kept the key (None) is
    taken on trust.
    """
    if saved is None or saved["target_sha256"] == now["target_sha256"]:
        return None
    change = (f"{now['path']} holds other images than this run was trained on ({saved['count']} images in "
              f"{saved['path']}, {now['count']} now)")
    if not explicit:
        raise DataError(f"{change}; restore the original file, or name the data to resume on explicitly: "
                        f"progan train {now['path']} --resume {run_dir}")
    return f"{change}; resuming on them as asked"


def fade_reals(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """lerp(upsample(avgpool(x)), x, alpha): during a fade D sees reals only as sharp as G can make them."""
    if alpha >= 1.0:
        return x
    return torch.lerp(F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest"), x, alpha)


def split_batch(global_batch: int, rank: int, world: int) -> range:
    """Positions within a global minibatch that `rank` takes: rank, rank + world, ... (see module docstring)."""
    return range(rank, global_batch, world)


class Mirrored(Dataset):
    """A pyramid level read at (index, mirror) keys."""

    def __init__(self, level: Dataset) -> None:
        self.level = level

    def __len__(self) -> int:
        return len(self.level)

    def __getitem__(self, key: tuple[int, bool]) -> torch.Tensor:
        index, mirror = key
        image = self.level[index]
        return image.flip(-1) if mirror else image


class StreamSampler(Sampler):
    """This rank's (index, mirror) keys of every global minibatch, from stream position `start` on."""

    def __init__(self, n: int, seed: int, mirror: bool, start: int, global_batch: int, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.seed, self.mirror = n, seed, mirror
        self.start, self.global_batch, self.rank, self.world = start, global_batch, rank, world

    def epoch(self, epoch: int) -> tuple[list[int], list[bool]]:
        """The order of the N images in `epoch` and whether each is mirrored."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (1 << 63))
        order = torch.randperm(self.n, generator=g).tolist()
        flips = torch.randint(0, 2, (self.n,), generator=g).bool().tolist()
        return order, flips if self.mirror else [False] * self.n

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        pos, cache = self.start, {}
        while True:
            keys = []
            for p in (pos + i for i in split_batch(self.global_batch, self.rank, self.world)):
                epoch = p // self.n
                if epoch not in cache:
                    cache = {epoch: self.epoch(epoch), **{e: c for e, c in cache.items() if e >= epoch - 1}}
                order, flips = cache[epoch]
                keys.append((order[p % self.n], flips[p % self.n]))
            yield keys
            pos += self.global_batch


def reals_stream(path: Path, res: int, global_batch: int, start: int, *, seed: int, mirror: bool,
                 workers: int = 0, rank: int = 0, world: int = 1, pin_memory: bool = False,
                 worker_init_fn: Callable[[int], None] | None = None) -> Iterator[torch.Tensor]:
    """uint8 NCHW minibatches of rank `rank`'s share of the `res` level of `path`, from stream position
    `start`. `worker_init_fn` runs in each DataLoader worker (training makes them ignore signals)."""
    level = LevelDataset(Path(path), res)
    sampler = StreamSampler(len(level), seed, mirror, start, global_batch, rank, world)
    # A generator of its own: a DataLoader otherwise draws its worker seed from the global RNG each time a
    # level starts, which would make the latents depend on where a run was resumed.
    loader = DataLoader(Mirrored(level), batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=4 if workers else None, generator=torch.Generator(),
                        worker_init_fn=worker_init_fn if workers else None)
    return iter(loader)
