"""The generator's input: which latent is image i of set `seed`.

Image i of set `seed` (what `progan sample --seed S --seeds i`, `progan fid ... RUN --seed S`, the training
grids and `G.sample(n, seed)` all mean by it) has one latent, computed from (seed, i) alone: row i % 1024 of
`torch.randn(1024, latent_size)` drawn from a CPU `torch.Generator` seeded with
`(seed * 0x9E3779B1 + i // 1024) % 2**32`, scaled onto the sphere of radius sqrt(latent_size). ProGAN's
generator pixel-normalises its latent first (paper section 4.2), so only the direction matters and that
sphere is where its inputs live; slerp between two such latents stays on it.

It lives beside the networks, upstream of both training (its sample grids) and sampling, so neither needs
the other for it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from progan_cli.errors import UsageError

LATENT_BLOCK = 1024  # latents are drawn in blocks of this many rows, so image i is reached in O(1)
_SEED_MIX = 0x9E3779B1  # 2^32 / golden ratio: sets up to 1000 apart share no block seed below image 2e9
MAX_SEED = 2**32 - 1  # torch's CPU generator keeps 32 bits of its seed


def latents(seed: int, indices: Iterable[int], latent_size: int) -> torch.Tensor:
    """The latents of images `indices` of set `seed`: float32 (len(indices), latent_size) on the CPU.

    Each block of LATENT_BLOCK images has its own generator, so a row costs one block's draw whatever
    its index, and is the same for any n, batch size or device.
    """
    check_seed(seed)
    indices = list(indices)
    out = torch.empty(len(indices), latent_size)
    blocks: dict[int, torch.Tensor] = {}
    for row, i in enumerate(indices):
        block = i // LATENT_BLOCK
        if block not in blocks:
            rng = torch.Generator().manual_seed((seed * _SEED_MIX + block) % 2**32)
            blocks[block] = torch.randn(LATENT_BLOCK, latent_size, generator=rng)
        out[row] = blocks[block][i % LATENT_BLOCK]
    return out * (latent_size**0.5 / out.norm(dim=1, keepdim=True))


def check_seed(seed: int) -> None:
    """Seeds are 32-bit: torch's CPU generator ignores higher bits, so larger ones would alias smaller ones."""
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed {seed}: seeds are whole numbers from 0 to {MAX_SEED}")
