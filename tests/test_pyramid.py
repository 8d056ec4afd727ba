"""The pyramid file: level arithmetic against hand-computed numbers, round trips, and clear errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from progan_cli.data.dataset import LevelDataset, find_pyramid
from progan_cli.data.pyramid import FaceMeta, Pyramid, build_levels, resolutions_up_to, write_pyramid
from progan_cli.errors import DataError


def test_levels_are_a_float_box_average_chain_rounded_once():
    # An 8x8 image whose top-left 4x4 quarter has 2x2-block means 0.25, 0.25, 0.25, 1.75 (worked by hand).
    img = np.zeros((1, 8, 8, 3), np.uint8)
    for y, x in ((0, 0), (0, 2), (2, 0)):
        img[0, y:y + 2, x:x + 2] = np.array([[0, 0], [0, 1]])[..., None]   # mean 0.25
    img[0, 2:4, 2:4] = np.array([[1, 2], [2, 2]])[..., None]                # mean 1.75
    levels = build_levels(img)
    assert sorted(levels) == [4, 8]
    np.testing.assert_array_equal(levels[4][0, :2, :2, 0], [[0, 0], [0, 2]])   # rint of each mean
    big = np.zeros((1, 16, 16, 3), np.uint8)
    big[0, :8, :8] = img[0]
    # In float the 4x4 cell is (0.25 * 3 + 1.75) / 4 = 0.625 -> 1; from the rounded level above it would
    # be (0 + 0 + 0 + 2) / 4 = 0.5 -> 0. The official tool keeps floats, so 1.
    assert build_levels(big)[4][0, 0, 0, 0] == 1


def test_levels_match_numpy_block_means():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    levels = build_levels(x)
    f = x.astype(np.float64)
    for res in (16, 8, 4):
        f = f.reshape(3, res, 2, res, 2, 3).mean(axis=(2, 4))
        # float32 vs float64 can differ only where the value sits within float32 noise of a .5 tie
        assert np.abs(levels[res].astype(int) - np.rint(f)).max() <= 1
        assert (levels[res] == np.rint(f)).mean() > 0.999


def test_resolutions():
    assert resolutions_up_to(4) == [4]
    assert resolutions_up_to(128) == [4, 8, 16, 32, 64, 128]
    for bad in (2, 6, 2048):
        with pytest.raises(DataError, match="power of two"):
            resolutions_up_to(bad)


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    meta = [FaceMeta(source=f"photo{i}.jpg", face_index=i % 2, confidence=0.5 + i / 10) for i in range(5)]
    path = write_pyramid(tmp_path / "p.h5", x, meta, crop="center")
    assert not (tmp_path / "p.h5.partial").exists()
    with Pyramid(path) as pyr:
        assert (pyr.target, pyr.resolutions, len(pyr)) == (16, [4, 8, 16], 5)
        np.testing.assert_array_equal(pyr.images(16), x)
        np.testing.assert_array_equal(pyr.image(8, 3), build_levels(x)[8][3])
        assert list(pyr.meta("source")) == [m.source for m in meta]
        np.testing.assert_allclose(pyr.meta("confidence"), [m.confidence for m in meta], rtol=1e-6)
        assert pyr.attrs["crop"] == "center" and pyr.attrs["format_version"] == 1
        with pytest.raises(DataError, match="no 32x32 level"):
            pyr.level(32)


def test_foreign_files_are_refused(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="not an HDF5 file"):
        Pyramid(tmp_path / "text.h5")
    with pytest.raises(DataError, match="not a progan pyramid"):
        Pyramid(tmp_path / "other.h5")
    with pytest.raises(DataError, match="no such file"):
        Pyramid(tmp_path / "missing.h5")


def test_level_dataset_with_workers(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    path = write_pyramid(tmp_path / "p.h5", x)
    for in_memory in (True, False):
        ds = LevelDataset(path, 8, in_memory=in_memory)
        loader = DataLoader(ds, batch_size=3, num_workers=2)
        got = torch.cat(list(loader))
        assert got.dtype == torch.uint8 and got.shape == (7, 3, 8, 8)
        np.testing.assert_array_equal(got.numpy(), x.transpose(0, 3, 1, 2))


def test_find_pyramid(tmp_path):
    with pytest.raises(DataError, match="no pyramid"):
        find_pyramid(tmp_path)
    write_pyramid(tmp_path / "a.h5", np.zeros((1, 4, 4, 3), np.uint8))
    assert find_pyramid(tmp_path) == tmp_path / "a.h5"
    write_pyramid(tmp_path / "b.h5", np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="several pyramids"):
        find_pyramid(tmp_path)
