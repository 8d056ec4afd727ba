"""The pyramid's stored digest of its target level, and what it keys: a resumed run's data (another data set
is refused, or taken with a warning when named), and the statistics cache of a pyramid level."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from progan_cli.cli.app import app
from progan_cli.data.pyramid import FaceMeta, Pyramid, PyramidWriter, write_pyramid
from progan_cli.metrics.sources import PyramidSource
from conftest import TINY, photo_pyramid

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()


def _images(n: int, res: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, res, res, 3), dtype=np.uint8)


def test_writer_stores_the_sha256_of_the_target_level(tmp_path):
    images = _images(7)
    with PyramidWriter(tmp_path / "two.h5", 8) as writer:  # appended in two batches, as prep does
        writer.append(images[:3], [FaceMeta(source=str(i)) for i in range(3)])
        writer.append(images[3:], [FaceMeta(source=str(i)) for i in range(3, 7)])
    write_pyramid(tmp_path / "one.h5", images)
    expected = hashlib.sha256(images.tobytes()).hexdigest()  # the oracle: hashlib over the array itself
    for name in ("two.h5", "one.h5"):
        with Pyramid(tmp_path / name) as pyr:
            assert pyr.target_sha256 == expected
    # A file written before the digest was stored gets the same value, computed from its level.
    with h5py.File(tmp_path / "one.h5", "a") as f:
        del f.attrs["target_sha256"]
    with Pyramid(tmp_path / "one.h5") as pyr:
        assert pyr.target_sha256 == expected
    with Pyramid(write_pyramid(tmp_path / "other.h5", _images(7, seed=1))) as pyr:
        assert pyr.target_sha256 != expected


def test_resume_on_other_data_is_refused_unless_named(tmp_path):
    data = photo_pyramid(tmp_path / "faces.h5", 8)  # 8 images
    run = tmp_path / "run"
    args = ["--target", "8", *TINY, "--minibatch", "8", "--stable-kimg", "0.064", "--fade-kimg", "0.064"]
    assert runner.invoke(app, ["train", str(data), *args, "--total-kimg", "0.032", "--out", str(run)]).exit_code == 0
    # The same path now holds another data set (the 10,000 images -> 87).
    write_pyramid(data, _images(3))
    refused = runner.invoke(app, ["train", "--resume", str(run), "--total-kimg", "0.064"])
    assert refused.exit_code == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "other images than this run was trained on" in line
    assert "8 images" in line and "3 now" in line and f"progan train {data} --resume {run}" in line
    # Named on the command line, it is taken, with a warning.
    taken = runner.invoke(app, ["train", str(data), "--resume", str(run), "--total-kimg", "0.064"])
    assert taken.exit_code == 0, taken.output
    assert "warning:" in taken.stderr and "resuming on them as asked" in taken.stderr
    # The new checkpoint holds the new data's key: resuming again is quiet.
    again = runner.invoke(app, ["train", "--resume", str(run), "--total-kimg", "0.096"])
    assert again.exit_code == 0 and "warning" not in again.stderr


def test_resume_on_a_moved_copy_of_the_same_data_is_quiet(tmp_path):
    data = photo_pyramid(tmp_path / "faces.h5", 8)
    run = tmp_path / "run"
    args = ["--target", "8", *TINY, "--minibatch", "8"]
    assert runner.invoke(app, ["train", str(data), *args, "--total-kimg", "0.032", "--out", str(run)]).exit_code == 0
    moved = data.rename(tmp_path / "elsewhere.h5")
    result = runner.invoke(app, ["train", str(moved), "--resume", str(run), "--total-kimg", "0.064"])
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output


def test_pyramid_content_key_reads_no_image(tmp_path, monkeypatch):
    data = write_pyramid(tmp_path / "d.h5", _images(5, res=16))
    reads = []
    original = h5py.Dataset.__getitem__

    def counting(self, key):
        if self.name.startswith("/levels/"):
            reads.append(self.name)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    keys = {res: PyramidSource(data, res).content_key() for res in (8, 16)}
    assert reads == [] and keys[8] != keys[16]
    assert PyramidSource(data, 8).first(3).content_key() != keys[8]
    # Same images in another file: same key (a copy hits the cache); other images: another key.
    copy = write_pyramid(tmp_path / "copy.h5", _images(5, res=16))
    assert PyramidSource(copy, 8).content_key() == keys[8]
    other = write_pyramid(tmp_path / "other.h5", _images(5, res=16, seed=2))
    assert PyramidSource(other, 8).content_key() != keys[8]
