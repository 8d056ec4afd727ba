"""`progan fid` options that bound the work and protect files: --n-reals (part of the cache key), a cache
hit that reads no image of a pyramid, --save-stats that will not overwrite, and a warning when the two sides
hold images of different sizes."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from progan_cli.cli.app import app
from progan_cli.data.pyramid import write_pyramid
from progan_cli.metrics.sources import load_stats

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("private_cache")


def _fid(*args) -> dict:
    result = runner.invoke(app, ["fid", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return {**json.loads(result.stdout), "stderr": result.stderr}


def _folder(path, images: np.ndarray):
    path.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(path / f"{i}.png")
    return path


@pytest.mark.slow
def test_n_reals_caps_the_reals_and_a_cache_hit_reads_no_image(tmp_path, pth_weights, monkeypatch):  # noqa: F811
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    data = write_pyramid(tmp_path / "data.h5", images)
    fakes = _folder(tmp_path / "fakes", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    w = ["--weights", pth_weights]

    capped = _fid(data, fakes, "--n-reals", 4, *w)
    assert capped["n"] == [4, 3] and capped["cached"] == [False, False]
    # The oracle: a pyramid that holds only those 4 images.
    only4 = _fid(write_pyramid(tmp_path / "only4.h5", images[:4]), fakes, *w)
    assert only4["n"] == [4, 3] and only4["fid"] == capped["fid"]

    reads = []
    original = h5py.Dataset.__getitem__

    def counting(self, key):
        if self.name.startswith("/levels/"):
            reads.append((self.name, key))
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    again = _fid(data, fakes, "--n-reals", 4, *w)
    assert again["cached"] == [True, True] and again["fid"] == capped["fid"]
    assert reads == []  # the cache hit read no image of the pyramid
    more = _fid(data, fakes, "--n-reals", 5, *w)  # another cap, another key
    assert more["cached"] == [False, True] and more["n"] == [5, 3]
    assert reads and all(name == "/levels/16" for name, _ in reads)


@pytest.mark.slow
def test_save_stats_overwrites_only_when_asked_and_records_the_size(tmp_path, pth_weights):  # noqa: F811
    rng = np.random.default_rng(1)
    data = write_pyramid(tmp_path / "data.h5", rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    stats = tmp_path / "real.npz"
    w = ["--weights", str(pth_weights)]
    assert runner.invoke(app, ["fid", str(data), "--save-stats", str(stats), "--res", "8", *w]).exit_code == 0
    refused = runner.invoke(app, ["fid", str(data), "--save-stats", str(stats), *w])
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr
    assert load_stats(stats).res == 8
    replaced = runner.invoke(app, ["fid", str(data), "--save-stats", str(stats), "--overwrite", *w])
    assert replaced.exit_code == 0, replaced.output
    assert load_stats(stats).res == 16 and load_stats(stats).count == 4

    # 16x16 statistics against 8x8 images: FID runs, and says the sizes differ.
    small = _folder(tmp_path / "small", rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8))
    mixed = _fid(stats, small, *w)
    assert "different sizes" in mixed["stderr"] and "16x16" in mixed["stderr"] and "8x8" in mixed["stderr"]


def test_size_mismatch_names_both_sizes_and_only_then(tmp_path):
    from progan_cli.metrics.fid import size_mismatch
    from progan_cli.metrics.sources import PyramidSource, StatsSource

    data = write_pyramid(tmp_path / "data.h5", np.zeros((2, 16, 16, 3), np.uint8))
    unsized = StatsSource("pytorch-fid.npz", np.zeros(2), np.eye(2), None, None, None)  # no size recorded
    def sized_args(res):
        return np.zeros(2), np.eye(2), 10, "ttur", None, res

    sized = StatsSource("real.npz", *sized_args(64))
    assert size_mismatch([PyramidSource(data, 16), PyramidSource(data, 16)]) is None
    assert size_mismatch([PyramidSource(data, 8), unsized]) is None
    note = size_mismatch([sized, PyramidSource(data, 8).first(1)])
    assert f"real.npz at 64x64 and {data} at 8x8 (first 1)" in note and "pass --res 64" in note
    assert "pass --res" not in size_mismatch([sized, unsized, StatsSource("b.npz", *sized_args(32))])
