"""`progan sample`, `interpolate`, `export` and progan_cli.sampling on a tiny run trained by `progan train`.

Oracles: latents and slerp against NumPy formulas, the smoothed walk against scipy's n-d gaussian_filter (the
official code's call), the metrics' GeneratorSource for `sample`, the checkpoint for its export, and the
network called directly for a fading resolution.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from progan_cli.cli.app import app
from progan_cli.sampling import (LATENT_BLOCK, Interrupted, keyframe_walk, latents, load_generator, parse_seeds,
                                 save_samples, slerp, smooth_walk)
from conftest import TINY, photo_pyramid

pytestmark = pytest.mark.usefixtures("one_thread")

LATENT = 32  # TINY's --latent-size


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """8x8 run on the fixture photos: 4x4 stable 0-64 images, fading to 8x8 64-128 (a checkpoint at 96, alpha
    0.5), 8x8 stable to 192. Checkpoints every tick of 32 images, all kept."""
    tmp = tmp_path_factory.mktemp("sample")
    data = photo_pyramid(tmp / "photos.h5", 8)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, ["train", str(data), "--target", "8", *TINY, "--stable-kimg", "0.064",
                                      "--fade-kimg", "0.064", "--total-kimg", "0.192", "--minibatch", "8",
                                      "--tick-kimg", "0.032", "--snapshot-ticks", "1", "--keep", "10",
                                      "--out", str(tmp / "run")])
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return tmp / "run"


def cli(*args: str):
    return CliRunner().invoke(app, [*args])


def pngs(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def nchw(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------------------------- latents


def test_latent_of_image_i_is_its_blocks_row_on_the_sphere():
    seed = 7
    got = latents(seed, [0, 5, 1023, 1024, 3000], LATENT).numpy()
    for row, i in enumerate([0, 5, 1023, 1024, 3000]):
        rng = torch.Generator().manual_seed((seed * 0x9E3779B1 + i // 1024) % 2**32)
        z = torch.randn(1024, LATENT, generator=rng)[i % 1024].numpy().astype(np.float64)
        np.testing.assert_allclose(got[row], z / np.linalg.norm(z) * np.sqrt(LATENT), rtol=1e-6, atol=1e-6)
    # the same row whatever else is asked, in any order, and different rows and sets differ
    some = latents(seed, range(2 * LATENT_BLOCK + 3), LATENT)
    assert torch.equal(latents(seed, [3000 - 1024, 5], LATENT), some[[3000 - 1024, 5]])
    assert not torch.equal(latents(seed + 1, [5], LATENT), some[[5]])
    assert len({tuple(r) for r in some[:: 97].tolist()}) == len(some[:: 97])


def test_seed_lists():
    assert parse_seeds("3,17,100-103") == [3, 17, 100, 101, 102, 103]
    assert parse_seeds(" 5 ") == [5]
    from progan_cli.errors import UsageError

    for bad, needle in [("5-3", "runs backwards"), ("a", "numbers"), ("-1", "numbers"), ("1,,2", "numbers")]:
        with pytest.raises(UsageError, match=needle):
            parse_seeds(bad)


def _numpy_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """The textbook formula (Shoemake 1985) in float64."""
    omega = np.arccos(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)))
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def test_slerp_keeps_the_norm_and_hits_its_keyframes():
    a, b, c = latents(0, [1, 7, 42], LATENT)
    ts = [0.0, 0.1, 0.5, 0.9, 1.0]
    path = slerp(a, b, ts)
    for t, z in zip(ts, path.numpy()):
        np.testing.assert_allclose(z, _numpy_slerp(a.double().numpy(), b.double().numpy(), t), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(path.norm(dim=1).numpy(), np.sqrt(LATENT), rtol=1e-6)
    assert torch.equal(path[0], a)
    # a walk over three keyframes: 4 frames each, looping back; frame 4k is keyframe k bit for bit
    walk = keyframe_walk(torch.stack([a, b, c]), 4)
    assert walk.shape == (12, LATENT)
    assert torch.equal(walk[0], a) and torch.equal(walk[4], b) and torch.equal(walk[8], c)
    np.testing.assert_allclose(walk[11].numpy(), _numpy_slerp(c.double().numpy(), a.double().numpy(), 0.75),
                               rtol=1e-5, atol=1e-6)
    # several cells at once (keys (K, cells, L)) and a keyframe repeated (a parallel pair: no NaN)
    cells = keyframe_walk(torch.stack([torch.stack([a, b]), torch.stack([a, c])]), 3)
    assert cells.shape == (6, 2, LATENT) and torch.equal(cells[3, 1], c)
    assert torch.equal(slerp(a, a, [0.5])[0], a)


def test_smooth_walk_is_the_official_recipe():
    from scipy.ndimage import gaussian_filter

    frames, cells, sigma = 40, 3, 2.5
    got = smooth_walk(11, frames, cells, LATENT, sigma).numpy()
    z = latents(11, range(frames * cells), LATENT).numpy().reshape(frames, cells, LATENT)
    want = gaussian_filter(z, [sigma, 0, 0], mode="wrap")  # util_scripts.generate_interpolation_video
    want /= np.sqrt(np.mean(np.square(want)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (frames, cells, LATENT)


# ----------------------------------------------------------------------------------------- the generator


def test_image_i_does_not_depend_on_what_else_is_made(run):
    from progan_cli.metrics.sources import GeneratorSource

    G = load_generator(run)
    assert G.res == 8 and G.resolutions == [4, 8] and G.weights == "G_ema"
    together = G.sample(14, seed=5)
    assert together.dtype == torch.uint8 and together.shape == (14, 3, 8, 8)
    one_by_one = torch.cat([G.sample([i], seed=5) for i in range(14)])
    assert torch.equal(together, one_by_one)
    assert torch.equal(G.sample([9, 3], seed=5), together[[9, 3]])
    source = GeneratorSource.from_checkpoint(run, 14, "cpu", seed=5)
    by_1 = torch.cat(list(source.batches(1)))
    by_7 = list(source.batches(7))
    assert [len(b) for b in by_7] == [7, 7]
    assert torch.equal(by_1, together) and torch.equal(torch.cat(by_7), together)
    assert not torch.equal(G.sample(14, seed=6), together)


def test_sample_equals_what_fid_scores(run, tmp_path):
    from progan_cli.metrics.sources import open_source

    result = cli("sample", str(run), "--n", "64", "--seed", "3", "--out", str(tmp_path / "fake"),
                 "--grid", str(tmp_path / "grid.png"), "--cols", "10", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(tmp_path / "fake"), str(tmp_path / "grid.png")]
    files = sorted((tmp_path / "fake").iterdir())
    assert [p.name for p in files] == [f"{i:06d}.png" for i in range(64)]
    written = pngs(tmp_path / "fake")
    source = open_source(run, n=64, seed=3)  # what `progan fid data.h5 RUN --n 64 --seed 3` reads
    np.testing.assert_array_equal(written, nchw(source.images()))
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (7 * 8, 10 * 8, 3)  # 64 images, 10 across: 7 rows, the last one partly empty
    np.testing.assert_array_equal(grid[8:16, 24:32], written[13])
    assert not grid[48:, 32:].any()

    npz = tmp_path / "some.npz"
    assert cli("sample", str(run), "--seeds", "62,3,20-21", "--seed", "3", "--out", str(npz),
               "--device", "cpu").exit_code == 0
    with np.load(npz) as f:
        np.testing.assert_array_equal(f["arr_0"], written[[62, 3, 20, 21]])
        assert f["indices"].tolist() == [62, 3, 20, 21] and int(f["seed"]) == 3


def test_the_training_grid_shows_the_first_images_of_the_runs_seed(run, tmp_path):
    grid = tmp_path / "grid.png"
    assert cli("sample", str(run), "--n", "256", "--grid", str(grid), "--cols", "16", "--device", "cpu").exit_code == 0
    ours = np.asarray(Image.open(grid)).astype(int)
    training = np.asarray(Image.open(run / "samples" / "fakes000000.192.png")).astype(int)  # 16x16 grid at 8x8
    assert ours.shape == training.shape == (128, 128, 3)
    diff = np.abs(ours - training)  # the loop renders 64 at a time: float rounding of another batch shape
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_a_fading_resolution_renders_at_its_alpha(run):
    G = load_generator(run / "checkpoints" / "ckpt-000000.096.pt")
    assert G.res == 4 and G.resolutions == [4, 8] and G.alpha(8) == 0.5 and G.alpha(4) == 1.0
    z = latents(0, range(3), LATENT)
    with torch.no_grad():
        want = G.net(z, 8, 0.5).numpy() * 127.5 + 127.5
    got = G.sample(3, res=8).numpy().astype(np.float64)
    assert np.abs(got - np.clip(np.rint(want), 0, 255)).max() <= 1  # float rounding of another batch shape
    with torch.no_grad():
        assert np.abs(G.net(z, 8, 1.0).numpy() * 127.5 + 127.5 - want).max() > 1  # alpha matters
    assert G.sample(2).shape == (2, 3, 4, 4)


def test_bf16_sampling_is_close_to_fp32(run):
    fp32 = load_generator(run).sample(8).float()
    bf16 = load_generator(run, precision="bf16").sample(8).float()
    assert (bf16 - fp32).abs().mean() < 3 and not torch.equal(bf16, fp32)


def test_interrupted_sampling_leaves_only_complete_files(run, tmp_path):
    G = load_generator(run)
    calls = []

    def stop_after_two(k: int) -> None:
        calls.append(k)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

    with pytest.raises(Interrupted) as stopped:
        save_samples(G, range(100), 0, 8, folder=tmp_path / "out", npz=tmp_path / "a.npz", on_progress=stop_after_two)
    files = sorted((tmp_path / "out").iterdir())
    assert stopped.value.written == len(files) and 8 <= len(files) <= 16
    assert all(p.suffix == ".png" for p in files) and not (tmp_path / "a.npz").exists()
    np.testing.assert_array_equal(pngs(tmp_path / "out"), nchw(G.sample(len(files))))


# ----------------------------------------------------------------------------------------------- walks


def test_walks_as_gif_and_frames_show_the_sampled_keyframes(run, tmp_path):
    gif = tmp_path / "walk.gif"
    result = cli("interpolate", str(run), "--seeds", "1,7,42", "--frames", "4", "--grid", "3x2", "--fps", "20",
                 "--out", str(gif), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(gif)
    with Image.open(gif) as im:
        assert (im.n_frames, im.size, im.info["duration"], im.info["loop"]) == (12, (24, 16), 50, 0)
    frames = tmp_path / "frames"
    assert cli("interpolate", str(run), "--seeds", "1,7,42", "--frames", "4", "--grid", "3x2",
               "--out", str(frames) + "/", "--device", "cpu").exit_code == 0
    walk = pngs(frames)
    assert walk.shape == (12, 16, 24, 3) and max(p.name for p in frames.iterdir()) == "000011.png"
    # frame 4 is keyframe 7: cell c (row c // 3, column c % 3) shows image 7 of set c
    G = load_generator(run)
    for c in range(6):
        r, k = divmod(c, 3)
        np.testing.assert_array_equal(walk[4, 8 * r:8 * r + 8, 8 * k:8 * k + 8], nchw(G.sample([7], seed=c))[0])
    assert len({frame.tobytes() for frame in walk}) == 12

    smooth = tmp_path / "smooth"
    assert cli("interpolate", str(run), "--smooth", "0.5", "--seconds", "1", "--fps", "6", "--zoom", "3",
               "--out", str(smooth), "--device", "cpu").exit_code == 0
    zoomed = pngs(smooth)
    assert zoomed.shape == (6, 24, 24, 3)
    np.testing.assert_array_equal(zoomed[:, ::3, ::3], zoomed[:, 2::3, 1::3])  # each pixel a 3x3 block


def test_walk_as_mp4(run, tmp_path):
    av = pytest.importorskip("av")
    out = tmp_path / "walk.mp4"
    result = cli("interpolate", str(run), "--seeds", "0-2", "--frames", "5", "--grid", "2x2", "--fps", "10",
                 "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        rate = container.streams.video[0].average_rate
    assert len(decoded) == 15 and decoded[0].shape == (16, 16, 3) and rate == 10


# ---------------------------------------------------------------------------------------------- export


def test_export_round_trips_to_its_checkpoints_images(run, tmp_path):
    out = tmp_path / "G.safetensors"
    result = cli("export", str(run), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    ckpt = max((run / "checkpoints").glob("*.pt"))
    assert out.stat().st_size < ckpt.stat().st_size / 3
    import progan_cli

    G = progan_cli.load_generator(out)  # the three lines of the issue
    images = G.sample(16, seed=0)
    assert images.shape == (16, 3, 8, 8) and images.dtype == torch.uint8
    assert torch.equal(images, load_generator(run).sample(16, seed=0))
    assert (G.res, G.cur_nimg, G.weights, G.config) == (8, 192, "G_ema", load_generator(run).config)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert (meta["format"], meta["resolution"], meta["kimg"]) == ("progan-generator", "8", "0.192")
    assert json.loads(meta["config"])["latent_size"] == LATENT
    # what takes a run takes an export: sample, and the metrics' sources
    assert cli("sample", str(out), "--n", "5", "--seed", "2", "--out", str(tmp_path / "s"), "--device",
               "cpu").exit_code == 0
    from progan_cli.metrics.sources import open_source

    np.testing.assert_array_equal(pngs(tmp_path / "s"), nchw(open_source(out, n=5, seed=2).images()))
    raw = tmp_path / "raw.safetensors"
    assert cli("export", str(run), "--raw", "--out", str(raw)).exit_code == 0
    assert not torch.equal(load_generator(raw).sample(4), images[:4])
    assert torch.equal(load_generator(raw, raw=True).sample(4), load_generator(run, raw=True).sample(4))


def test_import_progan_cli_stays_light():
    code = "import sys, progan_cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
    import progan_cli

    assert progan_cli.load_generator is load_generator
    with pytest.raises(AttributeError, match="no attribute 'sample'"):
        progan_cli.sample  # noqa: B018


# -------------------------------------------------------------------------------------------- bad input


def test_bad_input_fails_in_one_line_before_any_work(run, tmp_path, monkeypatch):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    foreign = tmp_path / "notes.pt"
    foreign.write_text("not a checkpoint")
    export = tmp_path / "G.safetensors"
    assert cli("export", str(run), "--out", str(export)).exit_code == 0
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(export.read_bytes()[: export.stat().st_size // 2])
    from safetensors import safe_open
    from safetensors.torch import load, save

    other = tmp_path / "other.safetensors"
    other.write_bytes(save({"w": torch.zeros(2)}))
    newer = tmp_path / "newer.safetensors"
    with safe_open(str(export), "pt") as f:
        meta = {**f.metadata(), "format_version": "99"}
    newer.write_bytes(save(load(export.read_bytes()), metadata=meta))
    newer_ckpt = tmp_path / "newer.pt"
    state = torch.load(max((run / "checkpoints").glob("*.pt")), weights_only=True)
    torch.save({**state, "format_version": 99}, newer_ckpt)
    out = tmp_path / "never"

    def fails(args: list[str], needle: str) -> None:
        result = cli(*args)
        lines = result.output.strip().splitlines()
        assert result.exit_code != 0 and len(lines) == 1, result.output
        assert lines[0].startswith("Error:") and needle in lines[0], result.output
        assert not out.exists() and list(full.iterdir()) == [full / "keep.txt"]

    fails(["sample", str(run), "--res", "16", "--out", str(out)], "has grown to 8x8 (it renders 4, 8)")
    fails(["sample", str(run / "checkpoints" / "ckpt-000000.064.pt"), "--res", "8", "--out", str(out)],
          "has grown to 4x4")
    fails(["sample", str(run), "--n", "0", "--out", str(out)], "--n 0")
    fails(["sample", str(run), "--seeds", "20-10", "--out", str(out)], "runs backwards")
    fails(["sample", str(run), "--seeds", "3,1-4", "--out", str(out)], "names image 3 twice")
    fails(["sample", str(run), "--n", "4", "--seeds", "3", "--out", str(out)], "exclude each other")
    fails(["sample", str(run), "--seed", "-1", "--out", str(out)], "--seed -1")
    fails(["sample", str(run)], "say where the images go")
    fails(["sample", str(run), "--out", str(tmp_path / "never.jpg")], "unknown extension '.jpg'")
    fails(["sample", str(run), "--out", str(out), "--format", "npz"], "end its name in .npz")
    fails(["sample", str(run), "--grid", str(tmp_path / "never.jpg")], "end the name in .png")
    fails(["sample", str(run), "--out", str(full)], "already holds files; pass --overwrite")
    fails(["sample", str(run), "--out", str(out), "--precision", "fp16"], "--precision 'fp16'")
    fails(["sample", str(tmp_path / "absent"), "--out", str(out)], "no such run folder")
    fails(["sample", str(foreign), "--out", str(out)], "not a readable checkpoint")
    fails(["sample", str(newer_ckpt), "--out", str(out)], "checkpoint format 99 is newer")
    fails(["sample", str(truncated), "--out", str(out)], "not a readable safetensors file")
    fails(["sample", str(other), "--out", str(out)], "not a generator exported by `progan export`")
    fails(["sample", str(newer), "--out", str(out)], "export format 99 is newer")
    fails(["sample", str(export), "--raw", "--out", str(out)], "holding G_ema only")
    fails(["interpolate", str(run), "--out", str(tmp_path / "never.avi")], "unknown extension '.avi'")
    fails(["interpolate", str(run), "--seeds", "3", "--out", str(out)], "at least two --seeds keyframes")
    fails(["interpolate", str(run), "--smooth", "1", "--seeds", "1,2", "--out", str(out)], "leave out --seeds")
    fails(["interpolate", str(run), "--grid", "3", "--out", str(out)], "COLSxROWS")
    fails(["interpolate", str(run), "--zoom", "0", "--out", str(out)], "--zoom")
    fails(["interpolate", str(run), "--out", str(full)], "already holds files")
    fails(["export", str(run), "--out", str(tmp_path / "never.pt")], "end its name in that")
    monkeypatch.setitem(sys.modules, "av", None)  # as if the video extra were not installed
    fails(["interpolate", str(run), "--out", str(tmp_path / "never.mp4")], 'pip install "progan[video]"')
    assert not (tmp_path / "never.mp4").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_trained_on_a_gpu_samples_on_the_cpu(tmp_path):
    data = photo_pyramid(tmp_path / "photos.h5", 4)
    args = [a if a != "cpu" else "cuda" for a in TINY]
    assert cli("train", str(data), "--target", "4", *args, "--total-kimg", "0.016", "--minibatch", "8",
               "--out", str(tmp_path / "run")).exit_code == 0
    result = cli("sample", str(tmp_path / "run"), "--n", "3", "--out", str(tmp_path / "s"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert pngs(tmp_path / "s").shape == (3, 4, 4, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_images_match_the_cpu_and_ignore_batching(run):
    cpu = load_generator(run).sample(40, seed=1).float()
    gpu = load_generator(run, "cuda")
    together = gpu.sample(40, seed=1)
    assert torch.equal(torch.cat([gpu.sample([i], seed=1) for i in range(40)]), together)
    assert (together.float() - cpu).abs().max() <= 2
    bf16 = load_generator(run, "cuda", precision="bf16").sample(40, seed=1).float()
    assert (bf16 - cpu).abs().mean() < 3
