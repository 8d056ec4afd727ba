"""`progan info`: on a pyramid written here it prints the image count, levels, attributes and skipped photos we
wrote (the target level's sha256 recomputed with hashlib), `--json` parses to the same; on a run, its checkpoint
and its export it says what they hold (kind, resolution, kimg, parameter counts); anything else (a missing path,
a foreign HDF5 file, a folder of no run, a text file) is one `Error:` line."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import TINY, photo_pyramid
from progan_cli.cli.app import app
from progan_cli.data.pyramid import FaceMeta, PyramidWriter

runner = CliRunner()


@pytest.fixture
def pyramid(tmp_path):
    """Five random 16x16 images and three skipped photos, written with extra attributes."""
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "faces.h5"
    with PyramidWriter(path, 16, crop="center", source_dir="photos/") as writer:
        writer.append(images, [FaceMeta(source=f"{i}.jpg") for i in range(5)])
        writer.skip(["a.jpg", "b.png", "c.jpg"], ["no face", "unreadable", "no face"])
    return path, images


def test_text_output_says_what_the_file_holds(pyramid):
    path, images = pyramid
    result = runner.invoke(app, ["info", str(path), "--skipped"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: 5 images, 16x16 target, levels 4, 8, 16"
    assert "  crop: center" in lines and "  source_dir: photos/" in lines
    assert f"  target_sha256: {hashlib.sha256(images.tobytes()).hexdigest()}" in lines
    assert "  skipped photos: 3 ({'no face': 2, 'unreadable': 1})" in lines
    assert lines[-3:] == ["    no face\ta.jpg", "    unreadable\tb.png", "    no face\tc.jpg"]
    assert result.stderr == ""


def test_json_output_parses_to_the_same(pyramid):
    path, images = pyramid
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["path"] == str(path)
    assert (out["attrs"]["count"], out["attrs"]["target"], out["attrs"]["resolutions"]) == (5, 16, [4, 8, 16])
    assert out["attrs"]["target_sha256"] == hashlib.sha256(images.tobytes()).hexdigest()
    assert {res: level["shape"] for res, level in out["levels"].items()} == {
        "4": [5, 4, 4, 3], "8": [5, 8, 8, 3], "16": [5, 16, 16, 3]}
    assert out["skipped"] == [{"source": "a.jpg", "reason": "no face"}, {"source": "b.png", "reason": "unreadable"},
                              {"source": "c.jpg", "reason": "no face"}]


@pytest.fixture
def run_files(tmp_path, one_thread):
    """A real 4x4 run of 8 images (one checkpoint) and its export."""
    data = photo_pyramid(tmp_path / "photos.h5", 4)
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", str(data), "--target", "4", *TINY, "--threads", "1",
                                  "--total-kimg", "0.008", "--minibatch", "4", "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    export = tmp_path / "G.safetensors"
    assert runner.invoke(app, ["export", str(run), "--out", str(export)]).exit_code == 0
    return run, next((run / "checkpoints").iterdir()), export


def test_networks_say_what_they_hold(run_files):
    run, checkpoint, export = run_files
    # TINY: fmap_base 128, fmap_max 64, latent 32; one block of 64 maps at 4x4.
    g_params = 32 * 64 * 16 + 64 + 64 * 64 * 9 + 64 + 64 * 3 + 3  # dense, stem bias, conv + bias, toRGB + bias
    for path, kind, nets in ((run, "progan checkpoint", ["G", "D", "G_ema"]),
                             (checkpoint, "progan checkpoint", ["G", "D", "G_ema"]),
                             (export, "progan export", ["G_ema"])):
        result = runner.invoke(app, ["info", str(path), "--json"])
        assert result.exit_code == 0, result.output
        about = json.loads(result.stdout)
        assert (about["kind"], about["resolution"], about["grown_to"], about["alpha"], about["kimg"]) == (
            kind, 4, 4, 1.0, 0.016)  # one schedule update: 4 minibatches of 4
        assert sorted(about["networks"]) == sorted(nets) and about["networks"]["G_ema"] == g_params
        assert (about["latent_size"], about["widths"], about["licence"]) == (32, [64], None)
        assert about["origin"].startswith("progan run run")
        text = runner.invoke(app, ["info", str(path)])
        assert text.exit_code == 0 and f"{kind}, 4x4 (fully grown)" in text.stdout
        assert f"G_ema ({g_params:,} parameters)" in text.stdout and "images shown: 0.016 kimg" in text.stdout


def test_anything_else_is_one_error_line(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    (tmp_path / "notes.h5").write_text("not HDF5\n")
    (tmp_path / "notes.txt").write_text("not a network\n")
    (tmp_path / "photos").mkdir()
    cases = {tmp_path / "absent.h5": "no such file", tmp_path / "absent": "no such run folder or checkpoint file",
             tmp_path / "notes.h5": "not an HDF5 file", tmp_path / "other.h5": "not a progan pyramid",
             tmp_path / "photos": "has no checkpoints", tmp_path / "notes.txt": "not a readable checkpoint"}
    for path, needle in cases.items():
        result = runner.invoke(app, ["info", str(path)])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and result.stdout == "", (path, result.output)
        assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], (path, result.stderr)
