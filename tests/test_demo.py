"""`progan demo --quick` end to end: every file it names exists and is what it says, and its sample grid is
closer to the training faces than the untrained network (SWD, computed here from the PNG it wrote); a second
run never writes over the first; without scikit-image one line names the extra."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from progan_cli.cli.app import app

try:
    importlib.metadata.distribution("scikit-image")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("progan demo's images ship with scikit-image (the demo extra)", allow_module_level=True)


@pytest.mark.slow
def test_quick_demo_end_to_end_and_its_grid_beats_the_untrained_network(tmp_path):
    from progan_cli.config import TrainConfig
    from progan_cli.data.pyramid import Pyramid
    from progan_cli.metrics.swd import compute_swd
    from progan_cli.networks import untrained_generator
    from progan_cli.sampling import generate

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["folder"] == str(out)
    for path in report["files"].values():
        assert Path(path).exists(), path
    with Pyramid(out / "astronaut.h5") as pyr:  # MTCNN found the one face, aligned at 64x64
        assert len(pyr) == 1 and pyr.images(64).shape == (1, 64, 64, 3)
        assert float(pyr.meta("confidence")[0]) > 0.9
    with Pyramid(out / "lfw.h5") as pyr:  # --crop square of 100 25x25 faces, levels 4..16
        assert pyr.resolutions == [4, 8, 16] and len(pyr) == 100
        reals = torch.from_numpy(pyr.images(16)).permute(0, 3, 1, 2)
    walk = Image.open(out / "walk.gif")
    assert walk.size == (4 * 16 * 4, 16 * 4) and walk.n_frames == 4 * 4  # 4 walks, zoom 4; 4 keyframes x 4

    # The grid as written: 10x10 cells of 16x16, images 0..99 of set 0.
    grid = np.asarray(Image.open(out / "samples.png").convert("RGB"))
    assert grid.shape == (160, 160, 3)
    cells = torch.from_numpy(grid.reshape(10, 16, 10, 16, 3).transpose(0, 2, 4, 1, 3).reshape(100, 3, 16, 16).copy())
    cfg = TrainConfig.load(out / "run" / "config.json")
    untrained = torch.cat(list(generate(untrained_generator(cfg), 0, range(100), 16)))
    swd_trained, swd_untrained = compute_swd(reals, cells)["mean"], compute_swd(reals, untrained)["mean"]
    assert swd_trained < 0.7 * swd_untrained, (swd_trained, swd_untrained)
    assert report["swd"]["trained"] == pytest.approx(swd_trained, rel=1e-5)  # the demo scored the same images
    assert report["swd"]["untrained"] == pytest.approx(swd_untrained, rel=1e-5)
    assert set(report["fid"]) in ({"trained", "untrained"}, set())
    if report["fid"]:
        assert report["fid"]["trained"] < report["fid"]["untrained"]


def test_a_second_run_gets_a_new_folder_and_out_must_be_new(tmp_path):
    from progan_cli.demo import demo_folder

    assert demo_folder(None, tmp_path) == tmp_path / "progan-demo"
    (tmp_path / "progan-demo").mkdir()
    assert demo_folder(None, tmp_path) == tmp_path / "progan-demo-2"
    (tmp_path / "progan-demo-2").mkdir()
    assert demo_folder(None, tmp_path) == tmp_path / "progan-demo-3"
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: --out {tmp_path / 'taken'} already holds files; give a new folder (the demo never writes over "
        "an earlier one)"]
    assert (tmp_path / "taken" / "x").read_text() == "mine"


def test_lfw_faces_are_the_first_100_crops_as_grayscale_pngs(tmp_path):
    from progan_cli.demo import write_lfw_faces

    paths = write_lfw_faces(tmp_path / "lfw")
    assert len(paths) == 100
    raw = np.load(importlib.metadata.distribution("scikit-image").locate_file("skimage/data/lfw_subset.npy"))
    image = Image.open(paths[37])
    assert image.mode == "L" and image.size == (25, 25)
    np.testing.assert_array_equal(np.asarray(image), np.rint(raw[37] * 255).astype(np.uint8))


def test_without_scikit_image_one_line_names_the_extra(tmp_path, monkeypatch):
    import progan_cli.demo

    monkeypatch.setattr(progan_cli.demo, "SKIMAGE_DIST", "scikit-image-not-installed")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: progan demo needs the optional 'demo' extra (its images ship with "
                                     'scikit-image): pip install "progan[demo]"')
    assert not (tmp_path / "d").exists()
