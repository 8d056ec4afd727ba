"""`progan info`: on a pyramid written here it prints the image count, levels, attributes and skipped photos we
wrote (the target level's sha256 recomputed with hashlib), `--json` parses to the same; anything that is not a
pyramid (missing path, a run folder, a checkpoint, an export, a foreign HDF5 file) is one `Error:` line."""

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


def test_anything_but_a_pyramid_is_one_error_line(tmp_path, one_thread):
    """info reads pyramids only: runs, checkpoints and exports (real ones, made here) are refused in one line."""
    data = photo_pyramid(tmp_path / "photos.h5", 4)
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", str(data), "--target", "4", *TINY, "--threads", "1",
                                  "--total-kimg", "0.008", "--minibatch", "4", "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    export = tmp_path / "G.safetensors"
    assert runner.invoke(app, ["export", str(run), "--out", str(export)]).exit_code == 0
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    (tmp_path / "notes.h5").write_text("not HDF5\n")
    cases = {tmp_path / "absent.h5": "no such file", run: "is a folder, not a pyramid file",
             export: "not an HDF5 file",
             next((run / "checkpoints").iterdir()): "not an HDF5 file", tmp_path / "notes.h5": "not an HDF5 file",
             tmp_path / "other.h5": "not a progan pyramid"}
    for path, needle in cases.items():
        result = runner.invoke(app, ["info", str(path)])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and result.stdout == "", (path, result.output)
        assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], (path, result.stderr)
