"""G_ema: the decay per step (paper's fixed 0.999, or a half-life in images with ramp-up) against hand numbers,
the update against numpy, and a short run whose G_ema has learned something (SWD below the untrained G's)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY, celeba_pyramid
from progan_cli.config import TrainConfig
from progan_cli.errors import UsageError
from progan_cli.images import to_uint8
from progan_cli.training.step import ema_beta, update_ema

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> TrainConfig:
    return TrainConfig(data="x.h5", **kw)


def test_paper_decay_is_fixed_per_step():
    c = cfg(ema_decay=0.999, ema_kimg=None, ema_rampup=None)
    assert ema_beta(c, 0, 128) == ema_beta(c, 10**7, 16) == 0.999
    # its half-life: ln 0.5 / ln 0.999 = 692.8 steps, i.e. 88.7 kimg at minibatch 128
    assert math.log(0.5) / math.log(0.999) == pytest.approx(692.8, abs=0.05)


def test_half_life_in_images_with_rampup():
    c = cfg()  # defaults: 10 kimg, ramp-up 0.05
    # long after the ramp-up: beta^(10000/16 steps) = 1/2
    assert ema_beta(c, 10**6, 16) ** (10_000 / 16) == pytest.approx(0.5, rel=1e-12)
    assert ema_beta(c, 10**6, 16) == pytest.approx(0.998891, abs=1e-6)  # 2^(-16/10000)
    # after 1000 images the half-life is 0.05 * 1000 = 50 images: 2^(-16/50) = 0.80107
    assert ema_beta(c, 1000, 16) == pytest.approx(0.801070, abs=1e-6)
    assert ema_beta(c, 0, 16) == 0.0  # the first step copies G
    assert ema_beta(cfg(ema_rampup=None), 1000, 16) == pytest.approx(0.998891, abs=1e-6)
    assert ema_beta(cfg(ema_kimg=0.0), 10**6, 16) == 0.0  # no averaging: G_ema = G


def test_update_ema_matches_numpy():
    torch.manual_seed(0)
    G = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    G_ema = copy.deepcopy(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p))
    expected = [0.9 * e.detach().numpy() + 0.1 * g.detach().numpy() for e, g in zip(G_ema.parameters(), G.parameters())]
    update_ema(G_ema, G, 0.9)
    for e, want in zip(G_ema.parameters(), expected):
        np.testing.assert_allclose(e.detach().numpy(), want, rtol=1e-6, atol=1e-7)


def test_ema_options_validated_and_old_configs_load_as_paper():
    with pytest.raises(UsageError, match="not both"):
        cfg(ema_decay=0.999)  # ema_kimg keeps its default
    with pytest.raises(UsageError, match="--ema-decay"):
        cfg(ema_decay=1.0, ema_kimg=None)
    with pytest.raises(UsageError, match="--ema-kimg"):
        cfg(ema_kimg=-1.0)
    old = {k: v for k, v in cfg().to_dict().items() if k not in ("ema_kimg", "ema_rampup")}
    old["ema_decay"] = 0.999  # what runs made before ema_kimg existed hold
    loaded = TrainConfig.from_dict(old)
    assert (loaded.ema_decay, loaded.ema_kimg, loaded.ema_rampup) == (0.999, None, None)


@pytest.mark.slow
def test_short_run_g_ema_is_closer_to_the_reals_than_the_untrained_network(tmp_path):
    """15 kimg on 1000 CelebA faces (4x4 -> 16x16, ~1 CPU minute): with the default EMA, G_ema draws
    face-coloured blobs and beats the initial network on SWD against the reals. (Measured on the same run:
    SWD 121 vs 225 for the untrained G; with the paper's 0.999 per step G_ema still draws the initial noise,
    252, since its half-life is ~89 kimg at minibatch 128.)"""
    from progan_cli.cli.app import app
    from progan_cli.data.pyramid import Pyramid
    from progan_cli.metrics.swd import compute_swd
    from progan_cli.networks import build_networks
    from progan_cli.sampling import load_generator

    data = celeba_pyramid(tmp_path / "faces.h5", 1000, 16)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(data), "--target", "16", *TINY, "--stable-kimg", "3",
                                      "--fade-kimg", "3", "--minibatch", "16", "--out", str(run)])
    assert result.exit_code == 0, result.output
    with Pyramid(data) as pyr:
        reals = torch.from_numpy(pyr.images(16)[:500]).permute(0, 3, 1, 2)
    trained = load_generator(run)
    G_ema, config = trained.net, trained.config
    torch.manual_seed(config.seed)  # the loop builds its networks right after seeding
    untrained, _ = build_networks(config)
    z = torch.randn(len(reals), config.latent_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fakes = {name: to_uint8(G(z, 16)) for name, G in (("trained", G_ema), ("untrained", untrained))}
    swd = {name: compute_swd(reals, x)["mean"] for name, x in fakes.items()}
    assert swd["trained"] < 0.7 * swd["untrained"], swd


def test_tf32_only_inside_training_steps_never_in_metrics(tmp_path):
    """--precision tf32: the steps run with TF32 allowed, the metrics callback without, and the process's
    own setting is back afterwards (the flags are plain settings, so this is checked on the CPU too)."""
    from conftest import photo_pyramid
    from progan_cli.training.loop import training_loop

    seen: dict[str, list[bool]] = {"step": [], "metrics": []}

    def flags() -> bool:
        return torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32

    def metrics(G_ema, res):
        seen["metrics"].append(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
        return {}

    data = photo_pyramid(tmp_path / "p.h5", 4)
    config = TrainConfig(data=str(data), target=4, fmap_base=64, fmap_max=16, latent_size=8, device="cpu",
                         workers=0, precision="tf32", total_kimg=0.016, minibatch={4: 4}, tick_kimg=0.008,
                         metrics_ticks=1)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        import progan_cli.training.loop as loop

        real_step = loop.train_step

        def spy(*args, **kwargs):
            seen["step"].append(flags())
            return real_step(*args, **kwargs)

        loop.train_step = spy
        try:
            training_loop(config, tmp_path / "run", metrics=metrics)
        finally:
            loop.train_step = real_step
        assert seen["step"] and all(seen["step"])
        assert seen["metrics"] and not any(seen["metrics"])
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_fused_adam_state_loads_into_foreach_adam_and_back():
    """CUDA runs use fused Adam, CPU runs foreach: a checkpoint's optimizer state must load either way."""
    from progan_cli.training.step import make_optimizer

    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    fused = make_optimizer(net, 1e-3, (0.0, 0.99), 1e-8, fused=True)
    net(torch.randn(4, 5)).square().sum().backward()
    fused.step()
    plain = make_optimizer(net, 1e-3, (0.0, 0.99), 1e-8)
    plain.load_state_dict(fused.state_dict())
    for p in net.parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(plain.state[p][key], fused.state[p][key], rtol=0, atol=0)
    fused.load_state_dict(plain.state_dict())
