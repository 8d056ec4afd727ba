"""progan: Progressive Growing of GANs (Karras et al., ICLR 2018) as a command-line toolchain.

Data flows one way: files -> data (prep, pyramid) -> training -> checkpoints -> sampling / metrics.
The command-line app in :mod:`progan_cli.cli` only parses options and calls this package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("progan")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    """`progan_cli.load_generator` without importing torch on `import progan_cli` (PEP 562)."""
    if name == "load_generator":
        from progan_cli.sampling import load_generator

        return load_generator
    raise AttributeError(f"module 'progan_cli' has no attribute {name!r}")
