"""progan: Progressive Growing of GANs (Karras et al., ICLR 2018) as a command-line toolchain.

Data flows one way: files -> data (prep, pyramid) -> training -> checkpoints -> sampling / metrics.
The command-line app in :mod:`progan_cli.cli` only parses options and calls this package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("progan")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
