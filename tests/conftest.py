"""Shared test fixtures: where the real images live, and skips with a reason when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
# CI and developers have ../shared/data beside the clone; a bare clone does not.
SHARED_DATA = Path(os.environ.get("PROGAN_SHARED_DATA", ROOT.parent / "shared" / "data"))


# Tiny networks for training tests: a run from 4x4 to 16x16 takes seconds on the CPU.
TINY = ["--fmap-base", "128", "--fmap-max", "64", "--latent-size", "32", "--device", "cpu", "--workers", "0"]


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


@pytest.fixture
def one_thread():
    """Tiny networks gain nothing from a second thread, and lose a lot when the machine is busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def celeba_pyramid(path: Path, count: int, target: int) -> Path:
    """The standard CelebA centre crop (64x64 on the half-size images) of the first `count` faces."""
    import numpy as np
    from PIL import Image

    from progan_cli.data.pyramid import write_pyramid

    files = sorted(shared("celeba-half").glob("*.jpg"))[:count]
    crops = [np.asarray(Image.open(f).convert("RGB").crop((13, 29, 77, 93)).resize((target, target), Image.BOX))
             for f in files]
    return write_pyramid(path, np.stack(crops))


def photo_pyramid(path: Path, target: int) -> Path:
    """Centre squares of the committed fixture photos: 8 real images, no ../shared needed."""
    import numpy as np
    from PIL import Image

    from progan_cli.data.pyramid import write_pyramid

    images = []
    for f in sorted((FIXTURES / "photos").glob("*.jpg")):
        im = Image.open(f).convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        images.append(np.asarray(im.crop((left, top, left + side, top + side)).resize((target, target), Image.BOX)))
    return write_pyramid(path, np.stack(images))
