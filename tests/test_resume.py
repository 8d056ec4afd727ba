"""On the CPU a run stopped mid-tick and resumed ends bitwise identical to one that never stopped."""

from __future__ import annotations

import json

import pytest
import torch

from progan_cli.checkpoints import load_checkpoint
from progan_cli.config import TrainConfig
from progan_cli.sampling import load_generator
from progan_cli.training.loop import TIMING_FIELDS, training_loop
from conftest import TINY, photo_pyramid

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a, b) -> bool:
    """Exact equality of nested state dicts (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _log(run) -> list[dict]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING_FIELDS} for line in lines]


def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path):
    data = photo_pyramid(tmp_path / "photos.h5", 8)
    # 4 minibatches of 8 = 32 images per schedule update; phases of 128 + 128 images; ticks of 64.
    # WGAN-GP (random penalty mix), mirroring on: every RNG of the run is in play.
    cfg = TrainConfig(data=str(data), target=8, fmap_base=64, fmap_max=32, latent_size=16, stable_kimg=0.128,
                      fade_kimg=0.128, minibatch={4: 8, 8: 8}, tick_kimg=0.064, snapshot_ticks=2, device="cpu",
                      workers=0, grid=(2, 2))
    whole = training_loop(cfg, tmp_path / "whole")
    assert not whole.stopped and whole.cur_nimg == 384

    def stop_after(updates: int):
        calls = []
        return lambda: calls.append(1) or len(calls) == updates

    # Stopped twice: after 96 images (4x4 stable, mid-tick: ticks end at 64, 128) with DataLoader workers,
    # then 96 images later (mid-fade to 8x8, at a tick's end); the data order does not depend on workers.
    first = training_loop(cfg.replace(workers=2), tmp_path / "split", stop=stop_after(3))
    assert first.stopped and first.cur_nimg == 96
    torch.manual_seed(12345)  # a resumed part must restore every RNG, not inherit this process's
    second = training_loop(cfg, tmp_path / "split", resume=load_checkpoint(tmp_path / "split"), stop=stop_after(3))
    assert second.stopped and second.cur_nimg == 192
    torch.manual_seed(54321)
    resumed = training_loop(cfg, tmp_path / "split", resume=load_checkpoint(tmp_path / "split"))
    assert not resumed.stopped and resumed.cur_nimg == 384

    for name in ("G", "D", "G_ema"):
        assert _same(getattr(whole.nets, name).state_dict(), getattr(resumed.nets, name).state_dict()), name
    assert _same(whole.opt_G.state_dict(), resumed.opt_G.state_dict())
    assert _same(whole.opt_D.state_dict(), resumed.opt_D.state_dict())
    end_whole, end_split = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "progress", "rng", "tick_sums"):
        if key == "progress":
            end_whole[key].pop("total_sec"), end_split[key].pop("total_sec")
        assert _same(end_whole[key], end_split[key]), key
    assert _log(tmp_path / "whole") == _log(tmp_path / "split")
    assert len(_log(tmp_path / "whole")) == 6
    # Mid-fade (192 images: 8x8 at alpha 0.5) G_ema renders 4x4 fully; at the end 8x8.
    assert load_generator(tmp_path / "split" / "checkpoints" / "ckpt-000000.192.pt").res == 4
    assert load_generator(tmp_path / "split").res == 8


def test_cli_resume_extends_a_finished_run_exactly(tmp_path):
    from typer.testing import CliRunner

    from progan_cli.cli.app import app

    data = photo_pyramid(tmp_path / "photos.h5", 8)
    args = ["train", str(data), "--target", "8", *TINY, "--stable-kimg", "0.064", "--fade-kimg", "0.064",
            "--minibatch", "8", "--tick-kimg", "0.064"]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--total-kimg", "0.256", "--out", str(tmp_path / "straight")]).exit_code == 0
    assert runner.invoke(app, [*args, "--total-kimg", "0.128", "--out", str(tmp_path / "split")]).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "split"), "--total-kimg", "0.256"])
    assert result.exit_code == 0, result.output
    assert TrainConfig.load(tmp_path / "split" / "config.json").total_kimg == 0.256
    straight, split = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "rng"):
        assert _same(straight[key], split[key]), key
    assert _log(tmp_path / "straight") == _log(tmp_path / "split")
    refused = runner.invoke(app, ["train", "--resume", str(tmp_path / "split"), "--latent-size", "64"])
    assert refused.exit_code == 2 and "--latent-size cannot change" in refused.output
    finished = runner.invoke(app, ["train", "--resume", str(tmp_path / "split")])
    assert finished.exit_code == 2 and "already trained 0.256 kimg of 0.256" in finished.output

