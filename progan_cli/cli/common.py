"""Pieces every command shares: the stderr console, device choice, JSON output."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

# Progress and logs go to stderr so that stdout carries only results (shell pipelines stay clean).
err_console = Console(stderr=True)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is passed to torch as given."""
    import torch

    from progan_cli.errors import UsageError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but no CUDA GPU is visible; use --device cpu")
    return device


def print_json(data: Any) -> None:
    """One JSON document on stdout."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
