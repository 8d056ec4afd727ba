"""ProGAN's generator and discriminator (Karras et al. 2018) and their layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from progan_cli.networks.discriminator import Discriminator
from progan_cli.networks.generator import Generator

if TYPE_CHECKING:
    from progan_cli.config import TrainConfig

__all__ = ["Discriminator", "Generator", "build_discriminator", "build_generator", "build_networks",
           "untrained_generator"]


def build_generator(cfg: TrainConfig) -> Generator:
    """G as a run's config describes it."""
    return Generator(cfg.target, latent_size=cfg.latent_size, fmap_base=cfg.fmap_base, fmap_max=cfg.fmap_max,
                     stem_bias=cfg.stem_bias)


def build_discriminator(cfg: TrainConfig) -> Discriminator:
    """D as a run's config describes it."""
    return Discriminator(cfg.target, fmap_base=cfg.fmap_base, fmap_max=cfg.fmap_max,
                         mbstd_group_size=cfg.mbstd_group_size, mbstd_variant=cfg.mbstd_variant, fused=cfg.d_fused)


def build_networks(cfg: TrainConfig) -> tuple[Generator, Discriminator]:
    """G and D as a run's config describes them, G first (the order draws their initial weights in)."""
    G = build_generator(cfg)
    return G, build_discriminator(cfg)


def untrained_generator(cfg: TrainConfig) -> Generator:
    """The G a run of `cfg` starts from (`training_loop` seeds torch with cfg.seed, then builds): the baseline a
    trained generator's scores are compared with. The caller's RNG is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G, _ = build_networks(cfg)
    return G.requires_grad_(False).eval()
