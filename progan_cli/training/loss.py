"""GAN losses for ProGAN training: WGAN-GP (the paper's, section 6 / appendix A.1), logistic, LSGAN.

Every loss has `d_loss(D, reals, fakes, alpha)` and `g_loss(D, fakes, alpha)`, each returning
`(loss, stats)`: a scalar to backpropagate and a dict of detached 0-d tensors for logging (no host sync
here; call `.item()` when a tick reports). Stat names never repeat between the D and the G step
(`score_real`, `score_fake`, penalty terms; `score_fake_G`), so the two dicts merge without loss. `d_loss` detaches `fakes` itself. Reals and fakes go through D in
separate passes, as in the official code, so minibatch-stddev groups never mix them. Gradient penalties run
D and its input gradient in fp32 with autocast off, so a bf16 run keeps an exact penalty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Stats = dict[str, torch.Tensor]

# WGAN-GP weights of the paper (appendix A.1) and the official loss.py: the gradient penalty's lambda (its norm
# target is 1) and epsilon_drift, which keeps D's scores on the reals near zero. No option changes them.
GP_LAMBDA = 10.0
DRIFT = 0.001


def scores_and_input_grad(
    D: nn.Module, x: torch.Tensor, alpha: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """D(x) and d(sum D(x))/dx per sample, in fp32 with autocast off, the graph kept for the penalty's backward."""
    x = x.detach().float().requires_grad_(True)
    with torch.autocast(device_type=x.device.type, enabled=False):
        scores = D(x, alpha).float()
        (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return scores, grad


class WGANGP:
    """WGAN-GP with the drift term (Gulrajani et al. 2017; Karras et al. 2018, appendix A.1).

    D loss = D(fake) - D(real) + GP_LAMBDA * (||grad D(x_hat)|| - 1)^2 + DRIFT * D(real)^2, averaged over the
    minibatch, with x_hat = lerp(real, fake, u) and u ~ U(0, 1) per sample; G loss = -D(fake).

    Where this differs from the official code: the penalty's gradient is taken with respect to the image at
    the working resolution, as the PyTorch ports do. The official D always receives full-resolution images
    (the working image nearest-upscaled by 2^k) and pools them down inside; the gradient with respect to
    that input is the working-resolution gradient spread over 4^k copies of each pixel and divided by 4^k,
    so its norm is ||g|| / 2^k, and the official penalty pulls ||g|| toward 2^k rather than 1 while the
    working resolution is 2^k below the target. At the target resolution the two are identical.
    """

    def d_loss(
        self, D: nn.Module, reals: torch.Tensor, fakes: torch.Tensor, alpha: float | torch.Tensor = 1.0
    ) -> tuple[torch.Tensor, Stats]:
        fakes = fakes.detach()
        real = D(reals, alpha).float()
        fake = D(fakes, alpha).float()
        u = torch.rand(reals.shape[0], 1, 1, 1, device=reals.device)
        _, grad = scores_and_input_grad(D, torch.lerp(reals.float(), fakes.float(), u), alpha)
        norm = grad.square().sum(dim=(1, 2, 3)).sqrt()
        gp = (norm - 1.0).square() * GP_LAMBDA
        drift = real.square() * DRIFT
        loss = (fake - real + gp + drift).mean()
        stats = {"score_real": real, "score_fake": fake, "gp": gp, "grad_norm": norm, "drift": drift}
        return loss, _means(stats)

    def g_loss(
        self, D: nn.Module, fakes: torch.Tensor, alpha: float | torch.Tensor = 1.0
    ) -> tuple[torch.Tensor, Stats]:
        fake = D(fakes, alpha).float()
        loss = -fake.mean()
        return loss, _means({"score_fake_G": fake})


class Logistic:
    """Non-saturating logistic loss (Goodfellow et al. 2014), as the official StyleGAN code's `D_logistic` /
    `G_logistic_nonsaturating` (no R1 penalty: no option sets one).

    D loss = softplus(D(fake)) + softplus(-D(real)); G loss = softplus(-D(fake)).
    """

    def d_loss(
        self, D: nn.Module, reals: torch.Tensor, fakes: torch.Tensor, alpha: float | torch.Tensor = 1.0
    ) -> tuple[torch.Tensor, Stats]:
        real = D(reals, alpha).float()
        fake = D(fakes.detach(), alpha).float()
        loss = (F.softplus(fake) + F.softplus(-real)).mean()
        return loss, _means({"score_real": real, "score_fake": fake})

    def g_loss(
        self, D: nn.Module, fakes: torch.Tensor, alpha: float | torch.Tensor = 1.0
    ) -> tuple[torch.Tensor, Stats]:
        fake = D(fakes, alpha).float()
        loss = F.softplus(-fake).mean()
        return loss, _means({"score_fake_G": fake})


class LSGAN:
    """Least-squares GAN (Mao et al. 2017) with targets 1 for real, 0 for fake.

    D loss = ((D(real) - 1)^2 + D(fake)^2) / 2; G loss = (D(fake) - 1)^2 / 2.
    """

    def d_loss(
        self, D: nn.Module, reals: torch.Tensor, fakes: torch.Tensor, alpha: float | torch.Tensor = 1.0
    ) -> tuple[torch.Tensor, Stats]:
        real = D(reals, alpha).float()
        fake = D(fakes.detach(), alpha).float()
        loss = ((real - 1).square() + fake.square()).mean() / 2
        return loss, _means({"score_real": real, "score_fake": fake})

    def g_loss(
        self, D: nn.Module, fakes: torch.Tensor, alpha: float | torch.Tensor = 1.0
    ) -> tuple[torch.Tensor, Stats]:
        fake = D(fakes, alpha).float()
        loss = (fake - 1).square().mean() / 2
        return loss, _means({"score_fake_G": fake})


def _means(stats: Stats) -> Stats:
    """Minibatch means of per-sample terms, detached from the graph."""
    return {k: v.detach().mean() for k, v in stats.items()}


LOSSES: dict[str, type] = {"wgan-gp": WGANGP, "logistic": Logistic, "lsgan": LSGAN}
