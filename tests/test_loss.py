"""The losses against numbers computed by hand, on critics whose input gradient is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from progan_cli.networks import Discriminator
from progan_cli.training.loss import LOSSES, LSGAN, WGANGP, Logistic


class LinearCritic(nn.Module):
    """D(x) = <w, x> + b per sample: its input gradient is w everywhere, so ||grad|| = ||w||."""

    def __init__(self, w: np.ndarray, b: float = 0.3) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.from_numpy(w).float())
        self.b = nn.Parameter(torch.tensor(b))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return (x * self.w).sum(dim=(1, 2, 3)) + self.b


class HalfSquareCritic(nn.Module):
    """D(x) = ||x||^2 / 2 per sample: its input gradient is x itself."""

    def forward(self, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        return x.square().sum(dim=(1, 2, 3)) / 2


def _data(seed: int = 0, n: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, 3, 4, 4)), rng.standard_normal((n, 3, 4, 4)), rng.standard_normal((n, 3, 4, 4))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).float()


def test_wgan_gp_on_linear_critic():
    w, reals, fakes = _data()
    D = LinearCritic(w)
    loss, stats = WGANGP().d_loss(D, _t(reals), _t(fakes), 1.0)
    real = (reals * w).sum(axis=(1, 2, 3)) + 0.3
    fake = (fakes * w).sum(axis=(1, 2, 3)) + 0.3
    norm = np.sqrt((w**2).sum())
    gp = 10 * (norm - 1) ** 2
    drift = 0.001 * (real**2).mean()
    assert loss.item() == pytest.approx((fake - real).mean() + gp + drift, rel=1e-5)
    assert stats["gp"].item() == pytest.approx(gp, rel=1e-5)
    assert stats["grad_norm"].item() == pytest.approx(norm, rel=1e-5)
    assert stats["drift"].item() == pytest.approx(drift, rel=1e-5)
    assert stats["score_real"].item() == pytest.approx(real.mean(), rel=1e-5, abs=1e-6)
    assert all(not v.requires_grad and v.ndim == 0 for v in stats.values())

    # The penalty is differentiated through its input gradient (double backward):
    # d/dw of mean(fake - real) + 10 (||w|| - 1)^2 + 0.001 mean(real^2).
    loss.backward()
    expected = (
        (fakes - reals).mean(axis=0, keepdims=True)
        + 20 * (norm - 1) * w / norm
        + 0.001 * (2 * real[:, None, None, None] * reals).mean(axis=0, keepdims=True)
    )
    np.testing.assert_allclose(D.w.grad.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_wgan_gp_mixes_each_sample_uniformly():
    w, reals, fakes = _data(1, n=64)
    D = LinearCritic(w)
    torch.manual_seed(0)
    WGANGP().d_loss(D, _t(reals), _t(fakes), 1.0)
    x_hat = D.inputs[2].double().numpy()  # calls: reals, fakes, then the mix
    d = fakes - reals
    u = ((x_hat - reals) * d).sum(axis=(1, 2, 3)) / (d * d).sum(axis=(1, 2, 3))  # least-squares weight
    np.testing.assert_allclose(x_hat, reals + u[:, None, None, None] * d, atol=1e-5)  # one weight per sample
    assert u.min() >= 0 and u.max() <= 1
    assert u.std() > 0.15  # U(0, 1) has std 0.29; not one weight for the whole batch


def test_wgan_gp_norm_of_a_nonconstant_gradient():
    # With reals == fakes, x_hat == reals whatever the mix, and grad D(x_hat) = x_hat.
    _, reals, _ = _data(2)
    _, stats = WGANGP().d_loss(HalfSquareCritic(), _t(reals), _t(reals), 1.0)
    norms = np.sqrt((reals**2).sum(axis=(1, 2, 3)))
    assert stats["grad_norm"].item() == pytest.approx(norms.mean(), rel=1e-5)
    assert stats["gp"].item() == pytest.approx((10 * (norms - 1) ** 2).mean(), rel=1e-5)


def test_wgan_gp_penalty_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    D = Discriminator(8, fmap_base=64, fmap_max=8)
    reals, fakes = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    torch.manual_seed(1)
    _, ref = WGANGP().d_loss(D, reals, fakes, 0.5)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = WGANGP().d_loss(D, reals, fakes, 0.5)
    assert loss.dtype == torch.float32
    # bf16 would leave ~3 significant digits; the penalty terms agree with the fp32 run to fp32 rounding.
    assert stats["grad_norm"].item() == pytest.approx(ref["grad_norm"].item(), rel=1e-5)
    assert stats["gp"].item() == pytest.approx(ref["gp"].item(), rel=1e-5)
    assert stats["score_real"].item() != ref["score_real"].item()  # the plain passes did run in bf16


def test_generator_losses_by_hand():
    w, _, fakes = _data(3)
    fake = (fakes * w).sum(axis=(1, 2, 3)) + 0.3
    D = LinearCritic(w)
    cases = [(WGANGP(), -fake.mean()), (Logistic(), np.log1p(np.exp(-fake)).mean()),
             (LSGAN(), ((fake - 1) ** 2).mean() / 2)]
    for loss_fn, expected in cases:
        loss, stats = loss_fn.g_loss(D, _t(fakes), 1.0)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert stats["score_fake_G"].item() == pytest.approx(fake.mean(), rel=1e-5, abs=1e-6)


def test_logistic_d_loss_by_hand():
    w, reals, fakes = _data(4)
    real = (reals * w).sum(axis=(1, 2, 3)) + 0.3
    fake = (fakes * w).sum(axis=(1, 2, 3)) + 0.3
    expected = (np.log1p(np.exp(fake)) + np.log1p(np.exp(-real))).mean()
    loss, stats = Logistic().d_loss(LinearCritic(w), _t(reals), _t(fakes), 1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(stats) == {"score_real", "score_fake"}
    assert stats["score_fake"].item() == pytest.approx(fake.mean(), rel=1e-5, abs=1e-6)


def test_lsgan_d_loss_by_hand():
    w, reals, fakes = _data(5)
    real = (reals * w).sum(axis=(1, 2, 3)) + 0.3
    fake = (fakes * w).sum(axis=(1, 2, 3)) + 0.3
    loss, _ = LSGAN().d_loss(LinearCritic(w), _t(reals), _t(fakes), 1.0)
    assert loss.item() == pytest.approx((((real - 1) ** 2) + fake**2).mean() / 2, rel=1e-5)


def test_d_loss_leaves_no_gradient_in_the_fakes_graph():
    w, reals, fakes = _data(6)
    fakes = _t(fakes).requires_grad_(True)
    for cls in LOSSES.values():
        loss, _ = cls().d_loss(LinearCritic(w), _t(reals), fakes * 1.0, 1.0)
        loss.backward()
        assert fakes.grad is None
    assert set(LOSSES) == {"wgan-gp", "logistic", "lsgan"}
