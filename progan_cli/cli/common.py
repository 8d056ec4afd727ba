"""Pieces every command shares: the stderr console and JSON output."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

# Progress and logs go to stderr so that stdout carries only results (shell pipelines stay clean).
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """One JSON document on stdout."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
