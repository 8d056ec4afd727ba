"""The random state a run draws from, captured into checkpoints so that a resumed run continues exactly."""

from __future__ import annotations

from typing import Any

import torch


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG the run draws from: torch's CPU generator and that of the CUDA device it trains on.

    All ranks draw the same streams (see training/step.py), so rank 0's state serves any rank count.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`; a CUDA state applies to this process's device (none when resuming on the CPU)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
