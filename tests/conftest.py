"""Shared test fixtures: where the real images live, and skips with a reason when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
# CI and developers have ../shared/data beside the clone; a bare clone does not.
SHARED_DATA = Path(os.environ.get("PROGAN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(sub: str) -> Path:
    """Path of a folder under ../shared/data, or skip the test that needs it with a reason."""
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the larger real-image sets live in ../shared/data)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    """Tests run on 2-core machines: keep torch from oversubscribing them."""
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
