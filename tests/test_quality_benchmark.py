"""benchmarks/celeba_quality.py keeps the paper's G_ema beside the default one in a single run; that shortcut
must equal what a real `--ema-decay 0.999` run's G_ema is, bit for bit, or its comparison means nothing."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import ROOT, photo_pyramid
from progan_cli.checkpoints import load_checkpoint
from progan_cli.config import TrainConfig

sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_paper_ema_beside_the_default_equals_a_paper_run(tmp_path):
    import celeba_quality
    from progan_cli.training.loop import training_loop

    data = photo_pyramid(tmp_path / "p.h5", 8)
    base = TrainConfig(data=str(data), target=8, fmap_base=64, fmap_max=16, latent_size=8, device="cpu", workers=0,
                       stable_kimg=0.064, fade_kimg=0.064, minibatch={4: 16, 8: 16}, tick_kimg=0.064)
    with celeba_quality.PaperEMA(0.999) as shadow:
        default = training_loop(base, tmp_path / "default")
    assert shadow.nimg == 192
    paper = training_loop(base.replace(ema_decay=0.999, ema_kimg=None, ema_rampup=None), tmp_path / "paper")
    for name in ("G", "D"):  # the same trajectory
        for a, b in zip(getattr(default.nets, name).state_dict().values(),
                        getattr(paper.nets, name).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(shadow.G_ema.state_dict().values(), paper.nets.G_ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and the two G_ema really differ (the default follows G closely this early)
    assert any(not torch.equal(a, b) for a, b in zip(default.nets.G_ema.state_dict().values(),
                                                     paper.nets.G_ema.state_dict().values()))
    assert load_checkpoint(tmp_path / "paper")["config"]["ema_decay"] == 0.999


def test_untrained_generator_is_the_one_a_run_starts_from(tmp_path):
    """PaperEMA with decay 1 never moves from its copy of G at the first step: the run's initial G."""
    import celeba_quality
    from progan_cli.networks import untrained_generator
    from progan_cli.training.loop import training_loop

    data = photo_pyramid(tmp_path / "p.h5", 4)
    cfg = TrainConfig(data=str(data), target=4, fmap_base=64, fmap_max=16, latent_size=8, device="cpu", workers=0,
                      total_kimg=0.016, minibatch={4: 8}, tick_kimg=0.016, seed=3)
    torch.manual_seed(123)
    before = torch.rand(3)
    with celeba_quality.PaperEMA(1.0) as first:
        training_loop(cfg, tmp_path / "run")
    torch.manual_seed(123)
    G = untrained_generator(cfg)
    assert torch.equal(torch.rand(3), before)  # the caller's RNG is untouched
    for a, b in zip(G.state_dict().values(), first.G_ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
