"""Metrics of a run, through the commands users type, on a real 16x16 run trained with `--metrics fid20,is20`:

- `progan fid DATA RUN --n N` equals `progan fid DATA FOLDER` on `progan sample RUN --n N` (issue 7: the same
  images), and both equal the FID the training loop logged for that G_ema (the in-training callback);
- the IS the loop logged equals `progan is` on the sampled images, whatever `--batch-size`;
- `progan swd DATA RUN --n N` equals compute_swd on the pyramid's images (read with h5py) and the sampled PNGs.

The Inception weights are fid-helper's, converted (conftest `pth_weights`), with a random classifier so IS is
not trivially 1.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY, photo_pyramid
from progan_cli.cli.app import app
from progan_cli.metrics.inception import ENV_WEIGHTS, PYTORCH_FID_FILE
from progan_cli.metrics.swd import compute_swd

N = 20  # generated images: IS in training uses 10 splits, so 2 images per split


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def weights(pth_weights, tmp_path_factory):
    """pytorch-fid layout, pool3 from the offline weights, a seeded random 2048 -> 1008 classifier."""
    state = torch.load(pth_weights, weights_only=True)
    state["fc.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.05
    path = tmp_path_factory.mktemp("classifier") / PYTORCH_FID_FILE
    torch.save(state, path)
    return path


def _train(tmp, metrics: str | None = None):
    """8 fixture photos at 16x16; 4x4, 8x8 and 16x16 in 48 images; with `metrics`, G_ema scored at the end."""
    data = photo_pyramid(tmp / "photos.h5", 16)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    cli("train", data, "--target", 16, *TINY, "--threads", 1, "--stable-kimg", 0.008, "--fade-kimg", 0.008,
        "--total-kimg", 0.040, "--minibatch", 4, "--tick-kimg", 0.016, "--out", tmp / "run",
        *(["--metrics", metrics] if metrics else []))
    torch.set_num_threads(before)
    return data, tmp / "run"


def _sample(run_dir, out):
    """`progan sample RUN --n N --seed 0`: the images train's metrics and `progan fid RUN --n N` score."""
    cli("sample", run_dir, "--n", N, "--seed", 0, "--device", "cpu", "--out", out)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def metrics_run(weights, tmp_path_factory):
    """A run trained with `--metrics fid20,is20`: (data, run folder, its last log line, scored at 16x16)."""
    tmp = tmp_path_factory.mktemp("metrics_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_WEIGHTS, str(weights))
        mp.setenv("PROGAN_CACHE", str(tmp / "cache"))
        data, run_dir = _train(tmp, f"fid{N},is{N}")
    last = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
    assert last["res"] == 16 and last["alpha"] == 1.0
    return data, run_dir, last


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("PROGAN_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
def test_fid_of_a_run_equals_fid_of_its_samples_and_the_logged_fid(metrics_run, weights, tmp_path, monkeypatch):
    data, run_dir, logged = metrics_run
    monkeypatch.setenv(ENV_WEIGHTS, str(weights))
    sampled = _sample(run_dir, tmp_path / "fakes")
    of_run = json.loads(cli("fid", data, run_dir, "--n", N, "--seed", 0, "--device", "cpu", "--json").stdout)
    of_folder = json.loads(cli("fid", data, sampled, "--device", "cpu", "--json").stdout)
    assert of_run["n"] == of_folder["n"] == [8, N]
    assert of_run["fid"] == pytest.approx(of_folder["fid"], rel=1e-6)
    assert logged[f"fid{N}"] == pytest.approx(of_run["fid"], rel=1e-6)
    assert of_run["fid"] > 0


@pytest.mark.slow
def test_logged_is_equals_is_of_the_samples_at_any_batch_size(metrics_run, weights, tmp_path, monkeypatch):
    _, run_dir, logged = metrics_run
    monkeypatch.setenv(ENV_WEIGHTS, str(weights))
    sampled = _sample(run_dir, tmp_path / "fakes")
    whole = json.loads(cli("is", sampled, "--device", "cpu", "--json").stdout)  # one batch of 20
    by_3 = json.loads(cli("is", sampled, "--batch-size", 3, "--device", "cpu", "--json").stdout)  # 6 x 3 + 2
    assert whole["n"] == by_3["n"] == N and len(whole["splits"]) == 10
    assert by_3["is"] == pytest.approx(whole["is"], rel=1e-5)
    np.testing.assert_allclose(by_3["splits"], whole["splits"], rtol=1e-5)
    assert logged[f"is{N}"] == pytest.approx(whole["is"], rel=1e-5)
    assert logged[f"is{N}_std"] == pytest.approx(whole["std"], rel=1e-4, abs=1e-7)
    assert whole["is"] > 1.001  # the random classifier makes the score more than its floor of 1


def test_swd_of_a_run_equals_compute_swd_on_its_samples(run, tmp_path):
    data, run_dir = run
    sampled = _sample(run_dir, tmp_path / "fakes")
    out = json.loads(cli("swd", data, run_dir, "--n", 8, "--seed", 0, "--device", "cpu", "--json").stdout)
    with h5py.File(data, "r") as f:
        reals = torch.from_numpy(f["levels/16"][()]).permute(0, 3, 1, 2)
    fakes = np.stack([np.asarray(Image.open(p)) for p in sorted(sampled.glob("*.png"))[:8]])
    want = compute_swd(reals, torch.from_numpy(fakes).permute(0, 3, 1, 2), seed=0)
    assert out["n"] == 8 and out["mean"] == pytest.approx(want["mean"], rel=1e-9)
    assert {int(k): v for k, v in out["levels"].items()} == pytest.approx(want["levels"], rel=1e-9)
    text = CliRunner().invoke(app, ["swd", str(data), str(run_dir), "--n", "8", "--device", "cpu"])
    assert float(text.stdout) == pytest.approx(want["mean"], rel=1e-5)  # the plain output: one number
