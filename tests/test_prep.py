"""`progan prep` end to end on real photos: detection, crops, levels, skips, resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import FIXTURES, ROOT, shared
from progan_cli.cli.app import app
from progan_cli.data.faces import load_rgb
from progan_cli.data.pyramid import Pyramid, build_levels

runner = CliRunner()


def prep(*args: str, input: str | None = None):
    result = runner.invoke(app, ["prep", *args], input=input)
    return result


def test_celeba_full_aligned_at_every_level(tmp_path):
    src = shared("celeba-full")
    out = tmp_path / "celeba.h5"
    result = prep(str(src), "--target", "128", "--out", str(out))
    assert result.exit_code == 0, result.output
    with Pyramid(out) as pyr:
        assert len(pyr) == 32 and pyr.resolutions == [4, 8, 16, 32, 64, 128]
        for res in pyr.resolutions:
            assert pyr.images(res).shape == (32, res, res, 3)
        quads = pyr.meta("quad")
        sides = np.hypot(*(quads[:, 3] - quads[:, 0]).T)
        assert 130 < sides.min() and sides.max() < 200  # REFERENCE.md: 140-184 px on these photos
        assert np.all(pyr.meta("confidence") >= 0.8)
        # The lower levels are the box-average chain of the stored top level.
        expected = build_levels(pyr.images(128))
        for res in pyr.resolutions:
            np.testing.assert_array_equal(pyr.images(res), expected[res])
        assert pyr.attrs["crop"] == "align" and pyr.attrs["sources"] == 32


def _broken_files(folder: Path) -> list[Path]:
    good = (FIXTURES / "photos" / "mtcnn_ivan.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.jpg").write_text("a text file with an image's name\n")
    return [folder / "truncated.jpg", folder / "notes.jpg"]


def _wild_photos() -> list[Path]:
    try:
        return sorted(shared("faces-wild").iterdir())
    except pytest.skip.Exception:
        return sorted(p for p in (FIXTURES / "photos").glob("*.jpg"))


def test_wild_photos_all_faces_and_skips(tmp_path):
    photos = _wild_photos() + _broken_files(tmp_path)
    out = tmp_path / "wild.h5"
    result = prep("-", "--faces", "all", "--target", "32", "--out", str(out), "--json",
                  input="\n".join(map(str, photos)) + "\n")
    assert result.exit_code == 0, result.output
    with Pyramid(out) as pyr:
        names = [Path(s).name for s in pyr.meta("source")]
        skipped = {Path(s).name: r for s, r in pyr.skipped()}
        assert names.count("facenet_multiface.jpg") >= 5          # six people, one half hidden
        assert names.count("deepface_selfie-many-people.jpg") >= 4    # the fifth, cut by the edge, scores 0.71
        assert names.count("mtcnn_ivan.jpg") >= 1      # a second, partly hidden face scores 0.78-0.85
        assert skipped == {"mtcnn_no-faces.jpg": "no face", "truncated.jpg": "unreadable",
                           "notes.jpg": "unreadable"}
        assert len(set(names)) + len(skipped) == len(photos)
        assert pyr.attrs["skipped"] == {"no face": 1, "unreadable": 2}
        # face_index counts faces within each photo
        idx = pyr.meta("face_index")
        assert sorted(idx[[n == "facenet_multiface.jpg" for n in names]]) == list(range(names.count("facenet_multiface.jpg")))


def test_center_crop_needs_no_detector(tmp_path):
    src = tmp_path / "aligned"
    src.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(src / f"{i:06d}.png")
    result = prep(str(src), "--crop", "center", "--target", "128", "--out", str(tmp_path / "c.h5"))
    assert result.exit_code == 0, result.output
    with Pyramid(tmp_path / "c.h5") as pyr:
        for i in range(3):
            np.testing.assert_array_equal(pyr.image(128, i), load_rgb(src / f"{i:06d}.png")[57:185, 25:153])


def _contents(path: Path) -> dict:
    """Every dataset and attribute of an HDF5 file, for comparing two files by content."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    return out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "progan_cli", "prep", *args]


def test_killed_prep_resumes_to_the_same_file(tmp_path):
    try:
        src, batch = shared("celeba-full"), "2"
    except pytest.skip.Exception:
        src, batch = FIXTURES / "photos", "1"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    whole, resumed = tmp_path / "whole.h5", tmp_path / "resumed.h5"
    args = [str(src), "--target", "32", "--batch", batch, "--device", "cpu"]
    subprocess.run(_cli(*args, "--out", str(whole)), check=True, env=env, capture_output=True)

    # First interruption: Ctrl-C. Second: SIGKILL, which gives the program no chance to clean up.
    parts = tmp_path / "resumed.h5.parts"
    for sig, shards in ((signal.SIGINT, 2), (signal.SIGKILL, 5)):
        proc = subprocess.Popen(_cli(*args, "--out", str(resumed)), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (parts / f"batch-{shards - 1:06d}.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0, "prep finished before it could be interrupted"
        assert not resumed.exists()
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "run the same command again" in err
    subprocess.run(_cli(*args, "--out", str(resumed)), check=True, env=env, capture_output=True)
    assert not parts.exists() and not (tmp_path / "resumed.h5.partial").exists()
    a, b = _contents(whole), _contents(resumed)
    assert a.keys() == b.keys()
    for key in a:
        if key == "attrs":
            assert a[key] == b[key]
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resume_refuses_other_options(tmp_path):
    src = FIXTURES / "photos"
    parts = tmp_path / "x.h5.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text('{"fingerprint": "something else"}')
    result = prep(str(src), "--crop", "center", "--out", str(tmp_path / "x.h5"))
    assert result.exit_code == 2
    assert "interrupted prep of other photos or options" in result.output


@pytest.mark.parametrize(("args", "code", "message"), [
    (["/no/such/folder"], 1, "no such folder"),
    (["{fixtures}/photos/mtcnn_ivan.jpg"], 1, "is a file"),
    (["{empty}"], 1, "holds no images"),
    (["{fixtures}/photos", "--target", "100"], 2, "--target must be a power of two"),
    (["{fixtures}/photos", "--crop", "oval"], 2, "--crop must be one of"),
    (["{fixtures}/photos", "--faces", "some"], 2, "--faces must be"),
    (["{fixtures}/photos", "--out", "{existing}"], 1, "exists; choose another --out or pass --overwrite"),
])
def test_bad_input_one_line(tmp_path, args, code, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "existing.h5").write_bytes(b"keep me")
    args = [a.format(fixtures=FIXTURES, empty=tmp_path / "empty", existing=tmp_path / "existing.h5") for a in args]
    result = subprocess.run(_cli(*args), capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == code
    assert result.stderr.strip().splitlines() == [f"Error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr
    assert (tmp_path / "existing.h5").read_bytes() == b"keep me"
