"""What metrics read: folders (recursive, any Pillow format), pyramid levels, generators, stats files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from progan_cli.data.pyramid import write_pyramid
from progan_cli.errors import DataError, UsageError
from progan_cli.metrics.fid import save_stats
from progan_cli.metrics.sources import (FolderSource, GeneratorSource, PyramidSource, StatsSource, load_stats,
                                        open_source)
from progan_cli.sampling import latents


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_folder_is_recursive_sorted_and_any_format(tmp_path):
    imgs = _images(3, 8)
    (tmp_path / "sub").mkdir()
    Image.fromarray(imgs[0]).save(tmp_path / "b.png")
    Image.fromarray(imgs[1]).save(tmp_path / "sub" / "a.bmp")
    Image.fromarray(imgs[2][..., 0]).save(tmp_path / "c.png")  # greyscale: read as RGB, like pytorch-fid
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source(tmp_path)
    assert isinstance(source, FolderSource) and source.count == 3 and source.res == 8
    batches = list(source.batches(2))
    assert [len(b) for b in batches] == [2, 1]
    got = torch.cat(batches).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got[0], imgs[0])  # b.png sorts before c.png and sub/a.bmp
    np.testing.assert_array_equal(got[1], np.repeat(imgs[2][..., :1], 3, axis=2))
    np.testing.assert_array_equal(got[2], imgs[1])


def test_folder_bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found"):
        FolderSource(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(_images(1, 8)[0]).save(mixed / "a.png")
    Image.fromarray(_images(1, 16)[0]).save(mixed / "b.png")
    with pytest.raises(DataError, match="differ in size"):
        FolderSource(mixed)
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(_images(1, 8)[0]).save(broken / "a.png")
    (broken / "b.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match="b.png"):
        FolderSource(broken)


def test_content_key_follows_bytes(tmp_path):
    Image.fromarray(_images(1, 8)[0]).save(tmp_path / "a.png")
    key = FolderSource(tmp_path).content_key()
    assert FolderSource(tmp_path).content_key() == key
    Image.fromarray(_images(1, 8, seed=1)[0]).save(tmp_path / "a.png")
    assert FolderSource(tmp_path).content_key() != key


def test_pyramid_levels(tmp_path):
    imgs = _images(5, 16)
    path = write_pyramid(tmp_path / "data.h5", imgs)
    top = open_source(path)
    assert isinstance(top, PyramidSource) and top.res == 16 and top.count == 5
    np.testing.assert_array_equal(top.images(2).permute(0, 2, 3, 1).numpy(), imgs)
    low = open_source(path, res=8)
    # The 8x8 level is the rounded 2x2 box average of the 16x16 one.
    box = imgs.astype(np.float32).reshape(5, 8, 2, 8, 2, 3).mean(axis=(2, 4))
    assert np.abs(low.images().permute(0, 2, 3, 1).numpy() - box).max() <= 0.5
    assert low.content_key() != top.content_key()
    with pytest.raises(DataError, match="no 32x32 level"):
        open_source(path, res=32)


class _Affine(torch.nn.Module):
    """A tiny generator honouring the contract G(z, res) -> NCHW in [-1, 1] (range exceeded on purpose)."""

    latent_size = 4

    def forward(self, z, res, alpha=1.0):
        return (z[:, :3, None, None] * 2).expand(-1, -1, res, res)


def test_generator_source_is_seeded_and_rounds_like_official_code():
    source = GeneratorSource(_Affine(), 4, 5, "cpu", seed=3)
    a, b = torch.cat(list(source.batches(2))), source.images(batch_size=5)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == (5, 3, 4, 4)
    assert torch.equal(GeneratorSource(_Affine(), 4, 2, "cpu", seed=3).images(), a[:2])  # prefix of any n
    z = latents(3, range(5), 4)  # images 0..4 of set 3 (tested against their definition in test_sample.py)
    want = np.clip(np.rint(z[:, :3].numpy() * 2 * 127.5 + 127.5), 0, 255)
    np.testing.assert_array_equal(a[:, :, 0, 0].numpy(), want)
    with pytest.raises(UsageError, match="--n"):
        GeneratorSource(_Affine(), 4, 0, "cpu")


def test_run_or_checkpoint_needs_n(tmp_path):
    ckpt = tmp_path / "network-snapshot-000100.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(UsageError, match="--n"):
        open_source(ckpt)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UsageError, match="--n"):
        open_source(tmp_path / "run")


def test_stats_files(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=4), np.eye(4)
    np.savez(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)  # what pytorch-fid --save-stats writes
    stats = open_source(tmp_path / "pytorch_fid.npz")
    assert isinstance(stats, StatsSource) and stats.count is None and np.array_equal(stats.mu, mu)
    save_stats(StatsSource("x", mu, sigma, 7, "ttur", "abc"), tmp_path / "ours.npz")
    back = load_stats(tmp_path / "ours.npz")
    assert (back.count, back.protocol, back.weights) == (7, "ttur", "abc")
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(DataError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="no such file"):
        open_source(tmp_path / "absent")


def test_metric_names():
    from progan_cli.metrics.evaluate import MetricSpec, parse_metrics

    assert parse_metrics(["fid10k", " KID500", "pr10k", "is50k", "fid10k"]) == [
        MetricSpec("fid10k", "fid", 10000), MetricSpec("kid500", "kid", 500), MetricSpec("pr10k", "pr", 10000),
        MetricSpec("is50k", "is", 50000)]
    # Without a count: the paper's 16,384 SWD images, 10,000 MS-SSIM pairs.
    assert parse_metrics(["swd", "msssim", "msssim1k"]) == [
        MetricSpec("swd", "swd", 16384), MetricSpec("msssim", "msssim", 10000),
        MetricSpec("msssim1k", "msssim", 1000)]
    for bad in ("fid", "kidk", "fid10m", "lpips10k", "fid0"):
        with pytest.raises(UsageError, match="unknown metric|asks for"):
            parse_metrics([bad])
    with pytest.raises(UsageError, match="needs at least 10"):
        parse_metrics(["is9"])  # 10 splits


def test_training_swd_callback_matches_compute_swd(tmp_path):
    from progan_cli.metrics.in_training import make_training_metrics
    from progan_cli.metrics.swd import compute_swd

    imgs = _images(6, 16)
    path = write_pyramid(tmp_path / "data.h5", imgs)
    callback = make_training_metrics(["swd"], tmp_path, 16, "cpu")
    got = callback(_Affine(), 16)
    fakes = GeneratorSource(_Affine(), 16, 6, "cpu").images()
    want = compute_swd(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), fakes)
    assert got["swd"] == want["mean"] and got["swd/16"] == want["levels"][16]
    assert callback(_Affine(), 8) == {}  # SWD starts at 16x16
    with pytest.raises(DataError, match="no 32x32 level"):
        make_training_metrics(["swd"], path, 32, "cpu")
