"""`progan eval` on a short CPU run trained by `progan train`: a line per checkpoint and metric in
metrics.jsonl, the same numbers as the training log and as the metrics called directly, resumption, one
Inception pass per source (forward calls counted), and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import one_error_line, shared
from progan_cli.cli.app import app
from progan_cli.data.pyramid import write_pyramid

TINY = ["--fmap-base", "128", "--fmap-max", "64", "--latent-size", "32", "--device", "cpu", "--workers", "0"]
REALS = 16


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run grown 4x4 -> 16x16 on 16 CelebA faces, checkpoints at 0.256, 0.512 and 0.640 kimg, scoring
    swd16 and msssim8 at the same ticks."""
    root = tmp_path_factory.mktemp("eval")
    files = sorted(shared("celeba-half").glob("*.jpg"))[:REALS]
    faces = [Image.open(f).convert("RGB").crop((12, 28, 76, 92)).resize((16, 16), Image.BOX) for f in files]
    data = write_pyramid(root / "faces.h5", np.stack([np.asarray(face) for face in faces]))
    run = root / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: a second thread only adds contention
    try:
        result = _run("train", data, "--target", 16, *TINY, "--stable-kimg", 0.128, "--fade-kimg", 0.128,
                      "--minibatch", 16, "--tick-kimg", 0.128, "--snapshot-ticks", 2, "--metrics-ticks", 2,
                      "--keep", 10, "--metrics", "swd16,msssim8", "--out", run)
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return run, data


def test_scores_every_checkpoint_matches_training_log_and_resumes(tiny_run):
    from progan_cli.checkpoints import list_checkpoints
    from progan_cli.metrics.msssim import compute_msssim
    from progan_cli.metrics.sources import GeneratorSource

    run, data = tiny_run
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["ckpt-000000.256.pt", "ckpt-000000.512.pt", "ckpt-000000.640.pt"]
    result = _run("eval", run, "--metrics", "swd16,msssim8", "--device", "cpu")
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()
    assert table[0].split() == ["run", "checkpoint", "res", "swd16", "msssim8"]
    assert [line.split()[1] for line in table[1:4]] == [p.name for p in ckpts]
    assert table[4:] == ["swd16: skipped at 8x8: SWD needs at least 16x16 images",
                         "msssim8: skipped at 8x8: MS-SSIM needs at least 16x16 images"]

    records = _records(run)
    # The first checkpoint draws 8x8 images: nothing to score; the others get one line per metric.
    assert [(r["checkpoint"], r["metric"], r["res"]) for r in records] == [
        (ckpts[1].name, "swd16", 16), (ckpts[1].name, "msssim8", 16),
        (ckpts[2].name, "swd16", 16), (ckpts[2].name, "msssim8", 16)]
    assert all(r["seed"] == 0 and r["data"] == str(data) and r["seconds"] >= 0 for r in records)
    assert [r["n"] for r in records[2:]] == [[16, 16], [8]]  # swd16 on the 16 reals; 8 pairs

    # Training scored its last tick with the same code on the same G_ema: the same numbers, up to the order of
    # sums (training ran on one thread; SWD's float32 projections are summed in chunks that follow the threads).
    last_tick = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert last_tick["kimg"] == 0.64
    assert set(records[2]["results"]) == {"swd16", "swd16/16"}
    assert records[2]["results"] == pytest.approx({k: last_tick[k] for k in records[2]["results"]}, rel=1e-6)
    assert records[3]["results"]["msssim8"] == pytest.approx(last_tick["msssim8"], rel=1e-9)
    # And the metric called directly on 16 images of the checkpoint's generator.
    fakes = GeneratorSource.from_checkpoint(ckpts[2], 16, "cpu")
    assert records[3]["results"]["msssim8"] == pytest.approx(compute_msssim(fakes.batches(5), 8)["msssim"],
                                                             rel=1e-12)

    # Resumed: nothing to do, the file stays as it was, the table is the same.
    before = (run / "metrics.jsonl").read_bytes()
    again = _run("eval", run, "--metrics", "swd16,msssim8", "--device", "cpu", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["written"] == 0
    assert (run / "metrics.jsonl").read_bytes() == before
    # A line lost (an eval stopped before that metric): only that pair is scored again, to the same value.
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in before.decode().splitlines()[:-1]))
    again = _run("eval", run, "--metrics", "swd16,msssim8", "--device", "cpu", "--json")
    assert json.loads(again.stdout)["written"] == 1
    assert _records(run)[-1]["results"] == records[-1]["results"]
    rows = json.loads(_run("eval", run, "--metrics", "msssim8", "--every", 2, "--device", "cpu", "--json").stdout)
    assert [row["checkpoint"] for row in rows["rows"]] == [ckpts[0].name, ckpts[2].name]


@pytest.mark.slow
def test_inception_metrics_share_one_pass_per_source(tiny_run, pth_weights, inception_calls, tmp_path, monkeypatch):
    from progan_cli.checkpoints import list_checkpoints
    from progan_cli.metrics.features import Extractor
    from progan_cli.metrics.fid import frechet_distance, statistics
    from progan_cli.metrics.kid import compute_kid
    from progan_cli.metrics.precision_recall import compute_precision_recall
    from progan_cli.metrics.sources import GeneratorSource, PyramidSource

    monkeypatch.setenv("PROGAN_CACHE", str(tmp_path / "cache"))
    src, data = tiny_run
    run = tmp_path / "run"  # a copy: the other test owns the original's metrics.jsonl
    (run / "checkpoints").mkdir(parents=True)
    for p in [src / "config.json", *list_checkpoints(src)]:
        (run / p.relative_to(src)).write_bytes(p.read_bytes())
    metrics = ["--metrics", "fid10,kid10,pr10,is10", "--weights", pth_weights, "--batch-size", 64, "--device", "cpu"]
    first = _run("eval", run, "--every", 2, *metrics)
    assert first.exit_code == 0, first.output
    # Per checkpoint one batch of 10 generated images serves all four metrics; the reals (16, one batch) are
    # read once per resolution (the first checkpoint draws 8x8 images, the last 16x16).
    assert inception_calls == [10, REALS, 10, REALS]
    inception_calls.clear()
    rest = _run("eval", run, *metrics, "--json")
    assert rest.exit_code == 0, rest.output
    assert inception_calls == [10]  # only the middle checkpoint was missing; its reals came from the disk cache
    inception_calls.clear()

    records = {(r["checkpoint"], r["metric"]): r for r in _records(run)}
    assert len(records) == 3 * 4 and json.loads(rest.stdout)["written"] == 4
    ckpt = list_checkpoints(run)[1]
    is10 = records[(ckpt.name, "is10")]
    assert is10["results"]["is10"] == pytest.approx(1.0) and is10["n"] == [10]  # zero classifier: IS 1
    # The numbers from features taken again: the reals' from the cache, the generator's in one new pass.
    res = records[(ckpt.name, "fid10")]["res"]
    extractor = Extractor(pth_weights, "ttur", "cpu", 64)
    real = extractor.features(PyramidSource(data, res)).pool3
    fake = extractor.features(GeneratorSource.from_checkpoint(ckpt, 10, "cpu")).pool3
    assert inception_calls == [10]
    assert records[(ckpt.name, "fid10")]["results"]["fid10"] == pytest.approx(
        frechet_distance(*statistics(fake), *statistics(real)), rel=1e-9)
    assert records[(ckpt.name, "fid10")]["n"] == [10, REALS]
    kid = compute_kid(fake, real, seed=0)
    assert records[(ckpt.name, "kid10")]["results"] == pytest.approx({"kid10": kid["kid"], "kid10_std": kid["kid_std"]})
    pr = compute_precision_recall(real[:10], fake)
    assert records[(ckpt.name, "pr10")]["results"] == {"pr10_precision": pr["precision"], "pr10_recall": pr["recall"]}
    assert all(r["protocol"] == "ttur" and r["weights"] == extractor.weights.fingerprint for r in records.values())


def test_bad_inputs_fail_in_one_line_before_any_work(tiny_run, tmp_path):
    from progan_cli.metrics import inception

    run, _ = tiny_run
    assert "unknown metric 'fid'" in one_error_line(_run("eval", run, "--metrics", "fid"), exit_code=2)
    assert "needs at least 10" in one_error_line(_run("eval", run, "--metrics", "is5"), exit_code=2)
    assert "--every" in one_error_line(_run("eval", run, "--every", 0, "--device", "cpu"), exit_code=2)
    (tmp_path / "empty").mkdir()
    assert "no checkpoints" in one_error_line(_run("eval", tmp_path / "empty", "--device", "cpu"))
    assert "absent.h5" in one_error_line(_run("eval", run, "--data", tmp_path / "absent.h5", "--device", "cpu"))
    copy = tmp_path / "copy"
    (copy / "checkpoints").mkdir(parents=True)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    (copy / "checkpoints" / ckpt.name).write_bytes(ckpt.read_bytes())
    helper = inception._fid_helper_file()
    if helper is not None:  # IS asked for with pool3-only weights: refused before anything is scored
        line = one_error_line(_run("eval", copy, "--metrics", "swd16,is10", "--weights", helper, "--device", "cpu"))
        assert inception.PYTORCH_FID_FILE in line and not (copy / "metrics.jsonl").exists()
