"""On the CPU a run stopped mid-tick and resumed ends bitwise identical to one that never stopped."""

from __future__ import annotations


import pytest
import torch

from progan_cli.checkpoints import load_checkpoint
from progan_cli.config import TrainConfig
from progan_cli.sampling import load_generator
from progan_cli.training.loop import training_loop
from conftest import TINY, photo_pyramid, run_log, same_state

pytestmark = pytest.mark.usefixtures("one_thread")


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
        assert same_state(getattr(whole.nets, name).state_dict(), getattr(resumed.nets, name).state_dict()), name
    assert same_state(whole.opt_G.state_dict(), resumed.opt_G.state_dict())
    assert same_state(whole.opt_D.state_dict(), resumed.opt_D.state_dict())
    end_whole, end_split = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "progress", "rng", "tick_sums"):
        if key == "progress":
            end_whole[key].pop("total_sec"), end_split[key].pop("total_sec")
        assert same_state(end_whole[key], end_split[key]), key
    assert run_log(tmp_path / "whole") == run_log(tmp_path / "split")
    assert len(run_log(tmp_path / "whole")) == 6
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
        assert same_state(straight[key], split[key]), key
    assert run_log(tmp_path / "straight") == run_log(tmp_path / "split")
    refused = runner.invoke(app, ["train", "--resume", str(tmp_path / "split"), "--latent-size", "64"])
    assert refused.exit_code == 2 and "--latent-size cannot change" in refused.output
    finished = runner.invoke(app, ["train", "--resume", str(tmp_path / "split")])
    assert finished.exit_code == 2 and "already trained 0.256 kimg of 0.256" in finished.output

