"""`progan prep` end to end on real photos: detection, crops, levels, skips, refusals, resume after a signal."""

from __future__ import annotations

import os
import shutil
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
from progan_cli.data.prep import PrepOptions, run_prep
from progan_cli.data.pyramid import Pyramid, build_levels, resolutions_up_to

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
        assert 130 < sides.min() and sides.max() < 200  # the CelebA-HQ quad on mtcnn's landmarks: 140-184 px here
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
    return [folder / "truncated.jpg", folder / "notes.jpg", folder / "gone.jpg"]


@pytest.mark.slow
def test_wild_photos_all_faces_and_skips(tmp_path):
    photos = sorted((FIXTURES / "photos").glob("*.jpg")) + _broken_files(tmp_path)
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
                           "notes.jpg": "unreadable", "gone.jpg": "missing"}
        assert len(set(names)) + len(skipped) == len(photos)
        assert pyr.attrs["skipped"] == {"no face": 1, "unreadable": 2, "missing": 1}
        # every kept crop is at least the target (no --upscale); smaller faces are counted, not hidden
        quads = pyr.meta("quad")
        assert np.hypot(*(quads[:, 3] - quads[:, 0]).T).min() >= 32
        assert set(pyr.attrs["dropped_faces"]) <= {"too small"} and pyr.attrs["upscaled"] == 0
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


def _same_files(a: Path, b: Path) -> None:
    ca, cb = _contents(a), _contents(b)
    assert ca.keys() == cb.keys()
    for key in ca:
        if key == "attrs":
            assert ca[key] == cb[key]
        else:
            np.testing.assert_array_equal(ca[key], cb[key], err_msg=key)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "progan_cli", "prep", *args]


@pytest.mark.slow
def test_signalled_prep_resumes_to_the_same_file(tmp_path):
    """SIGTERM and Ctrl-C go to the whole process group, as `timeout`, Slurm and a terminal send them."""
    try:
        src, batch = shared("celeba-full"), "2"
    except pytest.skip.Exception:
        src, batch = FIXTURES / "photos", "1"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    whole, resumed = tmp_path / "whole.h5", tmp_path / "resumed.h5"
    args = [str(src), "--target", "32", "--batch", batch, "--device", "cpu"]
    subprocess.run(_cli(*args, "--out", str(whole)), check=True, env=env, capture_output=True)

    # SIGTERM, then SIGINT to the group; last SIGKILL, which gives the program no chance to clean up.
    parts = tmp_path / "resumed.h5.parts"
    for sig, shards, code in ((signal.SIGTERM, 2, 143), (signal.SIGINT, 4, 130), (signal.SIGKILL, 6, -9)):
        proc = subprocess.Popen(_cli(*args, "--out", str(resumed)), env=env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (parts / f"batch-{shards - 1:06d}.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert not resumed.exists()
        if sig != signal.SIGKILL:
            last = err.strip().splitlines()[-1]
            assert last.startswith(f"{sig.name}: stopped with ") and last.endswith(
                f"run the same command again to continue where it stopped, or discard them with `rm -r {parts}`")
            assert not list(parts.glob("*.partial")), "a signal left a half-written shard"
    subprocess.run(_cli(*args, "--out", str(resumed)), check=True, env=env, capture_output=True)
    assert not parts.exists() and not list(tmp_path.glob("*.partial"))
    _same_files(whole, resumed)


def _square_photos(folder: Path) -> Path:
    """Three real photos for --crop square / none: two cut to their top-left square, one left whole."""
    from PIL import Image

    folder.mkdir()
    for i, name in enumerate(("deepface_couple.jpg", "mtcnn_ivan.jpg", "facenet_multiface.jpg")):
        img = load_rgb(FIXTURES / "photos" / name)
        s = min(img.shape[:2])
        Image.fromarray(img[:s, :s] if i < 2 else img).save(folder / f"{i}.png")
    return folder


def _crash(*_: int) -> None:
    raise RuntimeError("a crash inside prep")


def test_crash_before_any_batch_does_not_block_a_corrected_command(tmp_path):
    """A crash (an exception; here from the progress callback) can leave `.parts` with no finished batch."""
    src = _square_photos(tmp_path / "sq")
    out = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        run_prep(sorted(map(str, src.iterdir())), out, PrepOptions(crop="square", target=32), on_batch=_crash)
    assert (tmp_path / "x.h5.parts").is_dir()
    result = prep(str(src), "--crop", "square", "--target", "64", "--out", str(out))
    assert result.exit_code == 0, result.output
    with Pyramid(out) as pyr:
        assert pyr.target == 64


def test_other_prep_in_parts_names_the_way_out(tmp_path):
    """A crash after some batches keeps them (the same command resumes): another command is refused with the
    exact removal to run, or replaces them with --overwrite."""
    src = _square_photos(tmp_path / "sq")
    out, parts = tmp_path / "x.h5", tmp_path / "x.h5.parts"
    calls = []

    def crash_after_a_batch(*progress: int) -> None:
        calls.append(progress)
        if len(calls) == 2:
            _crash()

    with pytest.raises(RuntimeError):
        run_prep(sorted(map(str, src.iterdir())), out, PrepOptions(crop="square", target=32, batch=1),
                 command="progan prep sq/ --batch 1", on_batch=crash_after_a_batch)
    done = len(list(parts.glob("batch-*.npz")))  # the batch after the crash may have been saved too
    assert done >= 1 and (parts / "batch-000000.npz").exists()
    result = prep(str(src), "--crop", "square", "--target", "64", "--out", str(out))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: {parts} holds {done} finished batches of a prep with other photos or options (`progan prep sq/ "
        f"--batch 1`); run that command again to finish it, or discard them with `rm -r {parts}` "
        "(or pass --overwrite)"]
    result = prep(str(src), "--crop", "square", "--target", "64", "--out", str(out), "--overwrite")
    assert result.exit_code == 0, result.output
    assert not parts.exists()


def test_no_face_anywhere_is_an_error_with_the_counts(tmp_path):
    out = tmp_path / "none.h5"
    listing = f"{FIXTURES / 'photos' / 'mtcnn_no-faces.jpg'}\n{tmp_path / 'gone.jpg'}\n"
    result = prep("-", "--target", "32", "--device", "cpu", "--out", str(out), input=listing)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: no image from 2 photos (skipped: 1 no face, 1 missing); nothing written; "
        "for images that are not faces use --crop square")
    assert not out.exists() and not (tmp_path / "none.h5.parts").exists()


def test_target_above_the_crops_is_refused_on_the_first_batch(tmp_path):
    src = shared("celeba-full")  # 178x218: the CelebA centre crop is 128 px, the largest square 178 px
    out = tmp_path / "c.h5"
    for crop, side in (("center", 128), ("square", 178)):
        result = prep(str(src), "--crop", crop, "--target", "256", "--out", str(out))
        assert result.exit_code == 2
        assert result.output.strip().splitlines()[-1] == (
            f"Error: the {crop} crops in the first 32 photos are {side} px across (median), smaller than --target "
            "256; use --target 128 or pass --upscale to enlarge them")
        assert not out.exists() and not (tmp_path / "c.h5.parts").exists()
    result = prep(str(src), "--crop", "center", "--target", "256", "--upscale", "--batch", "8", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "32 upscaled (crop below 256 px)" in result.output
    with Pyramid(out) as pyr:
        assert len(pyr) == 32 and pyr.attrs["upscaled"] == 32


def test_small_photos_among_large_ones_are_left_out_and_counted(tmp_path):
    # Centre crops of 128 px (celeba-full) and 64 px (celeba-half) at --target 128: the median fits, the small
    # ones are skipped as "too small" unless --upscale.
    full, half = sorted(shared("celeba-full").iterdir())[:3], sorted(shared("celeba-half").iterdir())[:2]
    listing = "\n".join(map(str, full + half))
    result = prep("-", "--crop", "center", "--target", "128", "--out", str(tmp_path / "a.h5"), input=listing)
    assert result.exit_code == 0, result.output
    with Pyramid(tmp_path / "a.h5") as pyr:
        assert len(pyr) == 3 and pyr.attrs["skipped"] == {"too small": 2} and pyr.attrs["upscaled"] == 0
        assert [s for s, _ in pyr.skipped()] == list(map(str, half))
    result = prep("-", "--crop", "center", "--target", "128", "--out", str(tmp_path / "b.h5"), "--upscale",
                  input=listing)
    assert result.exit_code == 0, result.output
    assert "2 upscaled" in result.output
    with Pyramid(tmp_path / "b.h5") as pyr:
        assert len(pyr) == 5 and pyr.attrs["upscaled"] == 2


def test_crop_square_and_none_need_no_detector(tmp_path):
    """The largest centred square (or the whole square image), resized with Lanczos as create_lsun does."""
    from PIL import Image

    src = _square_photos(tmp_path / "sq")
    for crop, expected in (("square", {"0.png", "1.png", "2.png"}), ("none", {"0.png", "1.png"})):
        out = tmp_path / f"{crop}.h5"
        result = prep(str(src), "--crop", crop, "--target", "64", "--out", str(out))
        assert result.exit_code == 0, result.output
        with Pyramid(out) as pyr:
            assert {Path(s).name for s in pyr.meta("source")} == expected
            assert pyr.attrs["detector"] == {}
            for i, source in enumerate(pyr.meta("source")):
                img = load_rgb(source)
                s = min(img.shape[:2])
                y0, x0 = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
                want = np.asarray(Image.fromarray(img[y0:y0 + s, x0:x0 + s]).resize((64, 64), Image.LANCZOS))
                np.testing.assert_array_equal(pyr.image(64, i), want)
            if crop == "none":
                assert pyr.attrs["skipped"] == {"not square": 1}


def test_crop_none_refuses_a_folder_of_non_square_images(tmp_path):
    result = prep(str(FIXTURES / "photos"), "--crop", "none", "--target", "32", "--batch", "2",
                  "--out", str(tmp_path / "n.h5"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(
        "Error: --crop none takes square images, and none of the first 2 is (e.g. ")
    assert not (tmp_path / "n.h5.parts").exists()


def test_mostly_padding_crops_are_counted_and_can_be_left_out(tmp_path):
    # 160x160 crops that are already aligned: the FFHQ square around their face reaches far past the edges.
    aligned = sorted(shared("faces-wild").glob("facenet_test_images_aligned__*.png"))[:2]
    listing = "\n".join(map(str, aligned))
    result = prep("-", "--target", "32", "--device", "cpu", "--out", str(tmp_path / "a.h5"), input=listing)
    assert result.exit_code == 0, result.output
    assert "2 mostly reflection padding (--max-padding 0.5 leaves them out)" in result.output
    with Pyramid(tmp_path / "a.h5") as pyr:
        assert pyr.attrs["mostly_padding"] == 2
    result = prep("-", "--target", "32", "--device", "cpu", "--max-padding", "0.5", "--out", str(tmp_path / "b.h5"),
                  input=listing)
    assert result.exit_code == 1
    assert "(skipped: 2 too much padding)" in result.output


def test_disk_too_small_is_refused_up_front(tmp_path):
    per_photo = 3 * 1024 * 1024 + sum(3 * r * r for r in resolutions_up_to(1024))  # a shard crop + every level
    n = shutil.disk_usage(tmp_path).free // per_photo + 1
    if n > 200_000:
        pytest.skip(f"{tmp_path} has too much free disk to outgrow with a list of photos")
    out = tmp_path / "big.h5"
    result = prep("-", "--target", "1024", "--out", str(out), input=f"{FIXTURES / 'photos' / 'mtcnn_ivan.jpg'}\n" * n)
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith(f"Error: {out} needs about ") and f"({n} images at 1024x1024 " in line
    assert f"but {tmp_path} has " in line and " free; free space, or choose a smaller --target" in line
    assert "\n" not in line and not (tmp_path / "big.h5.parts").exists()


def test_workers_zero_decodes_in_the_main_thread(tmp_path):
    src = _square_photos(tmp_path / "sq")
    for workers in ("0", "2"):
        result = prep(str(src), "--crop", "square", "--target", "16", "--workers", workers,
                      "--out", str(tmp_path / f"w{workers}.h5"))
        assert result.exit_code == 0, result.output
    _same_files(tmp_path / "w0.h5", tmp_path / "w2.h5")


@pytest.mark.parametrize(("args", "code", "message"), [
    (["/no/such/folder"], 1, "no such folder"),
    (["{fixtures}/photos/mtcnn_ivan.jpg"], 1, "is a file"),
    (["{empty}"], 1, "holds no images"),
    (["{fixtures}/photos", "--target", "100"], 2, "--target must be a power of two"),
    (["{fixtures}/photos", "--crop", "oval"], 2, "--crop must be one of"),
    (["{fixtures}/photos", "--faces", "some"], 2, "--faces must be"),
    (["{fixtures}/photos", "--out", "{existing}"], 1, "exists; choose another --out or pass --overwrite"),
    (["{fixtures}/photos", "--out", "{empty}", "--overwrite"], 1, "is a folder; --out names the file to write"),
    (["{fixtures}/photos", "--out", "{existing}/x.h5"], 1, "is a file, not a folder"),
    (["{fixtures}/photos", "--workers", "-1"], 2, "--workers must be 0 (decode in the main thread) or more"),
    (["{fixtures}/photos", "--device", "tpu"], 2, "--device 'tpu' is not a device"),
    (["{fixtures}/photos", "--crop", "square", "--device", "tpu"], 2, "--device 'tpu' is not a device"),
    (["{fixtures}/photos", "--max-padding", "1.5"], 2, "--max-padding must be between 0 and 1"),
    (["-"], 1, "no paths on stdin"),
])
def test_bad_input_one_line(tmp_path, args, code, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "existing.h5").write_bytes(b"keep me")
    args = [a.format(fixtures=FIXTURES, empty=tmp_path / "empty", existing=tmp_path / "existing.h5") for a in args]
    result = subprocess.run(_cli(*args), capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == code
    assert result.stderr.strip().splitlines() == [f"Error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr
    assert (tmp_path / "existing.h5").read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "existing.h5"]  # nothing left behind


def test_prep_uses_the_mtcnn_defaults():
    """PrepOptions writes MTCNN's smallest face and window out (importing data/mtcnn.py imports torch, which a
    crop without detection never needs): they must stay equal, and a file records the cascade's settings as
    Zhang et al. 2016 give them (20 px, factor 0.709, thresholds 0.6 / 0.7 / 0.7), the oracle here."""
    from progan_cli.data import mtcnn
    from progan_cli.data.prep import MAX_DETECT_SIDE, _detector_attrs
    from progan_cli.errors import UsageError

    assert PrepOptions().min_face == mtcnn.MIN_FACE == 20
    PrepOptions(min_face=mtcnn.CELL).validate()
    with pytest.raises(UsageError, match="at least 12"):
        PrepOptions(min_face=mtcnn.CELL - 1).validate()
    assert _detector_attrs(PrepOptions(min_face=30)) == {
        "name": "mtcnn", "min_face": 30, "scale_factor": 0.709, "thresholds": [0.6, 0.7, 0.7],
        "max_detect_side": MAX_DETECT_SIDE}
