"""Optional extras (`pip install "progan[plot]"`, `progan[tensorboard]`): imported only by the feature that needs
them, with one line naming the extra when it is missing, before any work starts."""

from __future__ import annotations

import importlib
from types import ModuleType

from progan_cli.errors import UsageError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module` for `feature` (e.g. "progan plot"), or a UsageError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{feature} needs the optional '{extra}' extra: pip install \"progan[{extra}]\"") from None
