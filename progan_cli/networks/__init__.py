"""ProGAN's generator and discriminator (Karras et al. 2018) and their layers."""

from progan_cli.networks.discriminator import Discriminator
from progan_cli.networks.generator import Generator

__all__ = ["Discriminator", "Generator"]
