"""`progan train` end to end: a tiny network grows 4x4 -> 16x16 on real faces; bad input fails in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY, celeba_pyramid, photo_pyramid
from progan_cli.cli.app import app

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_run_grows_to_16_and_leaves_samples_log_checkpoints(tmp_path):
    from progan_cli.checkpoints import list_checkpoints
    from progan_cli.sampling import load_generator

    data = celeba_pyramid(tmp_path / "faces.h5", 200, 16)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(data), "--target", "16", *TINY, "--stable-kimg", "0.256",
                                      "--fade-kimg", "0.256", "--minibatch", "16", "--tick-kimg", "0.128",
                                      "--snapshot-ticks", "4", "--keep", "2", "--grid", "4x2", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert str(run) in result.stdout.splitlines()

    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    # Schedule updates every 4 minibatches of 16 = 64 images, a tick every 128: a tick's line shows the
    # schedule of its last update, at 128 k - 64 images. Phases of 256 + 256 images:
    # 64, 192 -> 4x4 stable; 320, 448 -> fade to 8 (alpha 64/256, 192/256); 576, 704 -> 8 stable; ...
    assert [line["res"] for line in log] == [4, 4, 8, 8, 8, 8, 16, 16, 16, 16]
    assert [line["phase"] for line in log] == ["stable", "stable", "fade", "fade"] * 2 + ["stable"] * 2
    assert [line["alpha"] for line in log if line["phase"] == "fade"] == pytest.approx([0.25, 0.75, 0.25, 0.75])
    assert log[-1]["kimg"] == 1.28 and log[-1]["alpha"] == 1.0
    assert all(np.isfinite(line[k]) for line in log for k in ("loss_D", "loss_G", "img_per_s"))

    fakes = sorted((run / "samples").glob("fakes*.png"))
    assert len(fakes) == len(log)
    assert Image.open(fakes[-1]).size == (4 * 16, 2 * 16)  # 4x2 grid of 16x16 cells
    # The reals grid holds the first 8 images of the 16x16 level, row by row.
    from progan_cli.data.pyramid import Pyramid

    with Pyramid(data) as pyr:
        first = pyr.images(16)[:8]
    reals = np.asarray(Image.open(run / "samples" / "reals.png"))
    np.testing.assert_array_equal(reals[16:32, 48:64], first[7])

    checkpoints = list_checkpoints(run)
    # written at ticks 4 and 8 and at the end (0.512, 1.024, 1.28 kimg); the newest two are kept
    assert [p.name for p in checkpoints] == ["ckpt-000001.024.pt", "ckpt-000001.280.pt"]
    G = load_generator(run, "cpu")
    assert G.res == 16
    with torch.no_grad():
        images = G.net(torch.randn(3, 32), G.res)
    assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()


def test_bad_inputs_fail_in_one_line_before_training(tmp_path, monkeypatch):
    data = photo_pyramid(tmp_path / "photos.h5", 16)
    foreign = tmp_path / "notes.h5"
    foreign.write_text("not hdf5")
    lacking = tmp_path / "lacking.h5"
    lacking.write_bytes(data.read_bytes())
    import h5py

    with h5py.File(lacking, "a") as f:
        del f["levels/8"]
    runner = CliRunner()

    def fails(args: list[str], needle: str, env: dict | None = None) -> None:
        result = runner.invoke(app, ["train", *args, *TINY, "--out", str(tmp_path / "never")], env=env)
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], result.output
        assert not (tmp_path / "never").exists()

    fails([str(tmp_path / "missing.h5")], "no such file")
    fails([str(foreign)], "not an HDF5 file")
    fails([str(lacking), "--target", "16"], "no 8x8 level")
    fails([str(data), "--target", "32"], "above the 16x16")
    fails([str(data), "--target", "16", "--minibatch", "16"], "does not divide over 3", env={"WORLD_SIZE": "3"})
    fails([str(data), "--target", "12"], "power of two")
    monkeypatch.chdir(tmp_path / "..")  # a folder without any *.h5
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    fails([], "no pyramid")


def test_a_diverging_run_stops_with_one_line_and_no_checkpoint(tmp_path):
    data = photo_pyramid(tmp_path / "photos.h5", 8)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(data), "--target", "8", *TINY, "--lr", "1e12", "--minibatch",
                                      "8", "--tick-kimg", "0.064", "--snapshot-ticks", "1", "--out", str(run)])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and re.search(r"loss_\w+ became (nan|-?inf) at kimg", error[0]), result.output
    assert "last good checkpoint is none" in error[0]
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


def test_bf16_run_through_a_fade_logs_finite_losses(tmp_path):
    data = photo_pyramid(tmp_path / "photos.h5", 8)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(data), "--target", "8", *TINY, "--precision", "bf16",
                                      "--stable-kimg", "0.016", "--fade-kimg", "0.032", "--total-kimg", "0.064",
                                      "--minibatch", "4", "--tick-kimg", "0.016", "--out", str(run)])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    # updates every 16 images, at 0, 16 (4x4 stable), 32 (fade, alpha 0.5), 48 (8x8 stable)
    assert [line["phase"] for line in log] == ["stable", "stable", "fade", "stable"]
    assert all(np.isfinite(line["loss_D"]) and np.isfinite(line["gp"]) for line in log)


def test_without_data_it_uses_the_one_pyramid_here_and_says_which(tmp_path, monkeypatch):
    data = photo_pyramid(tmp_path / "photos.h5", 4)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--target", "4", *TINY, "--total-kimg", "0.016", "--minibatch", "4"])
    assert result.exit_code == 0, result.output
    assert f"training on {data.resolve()}" in result.stderr
    run = Path("runs") / "00000-photos-4"
    assert result.stdout.splitlines() == [str(run)]
    assert (tmp_path / run / "log.jsonl").read_text().count("\n") == 1

