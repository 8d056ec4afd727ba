"""One training iteration: a D step, a G step and the G_ema update (official train.py, D_repeats = 1).

Shared by the training loop and `benchmarks/train_speed.py`, so the benchmark times exactly what training runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from progan_cli.config import TrainConfig


@dataclass
class Nets:
    """The three networks of a run: G and D are trained, G_ema is G's exponential moving average."""

    G: nn.Module
    D: nn.Module
    G_ema: nn.Module


@dataclass
class StepContext:
    """How a step runs: precision, and where this process sits among the ranks sharing a global minibatch."""

    latent_size: int
    precision: str = "fp32"  # "bf16": forward passes under autocast (the loss keeps its penalty in fp32)
    rank: int = 0
    world: int = 1
    # Averages a network's gradients over the ranks after each backward; None with one process.
    sync_grads: Callable[[nn.Module], None] | None = None

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def latents(self, local_batch: int, device: torch.device) -> torch.Tensor:
        """This rank's share of a global batch of latents.

        Every rank draws the whole global batch from the same RNG stream and keeps rows rank::world, so the
        ranks together see exactly the latents a single process would (see `data.stream.split_batch`).
        """
        z = torch.randn(local_batch * self.world, self.latent_size, device=device)
        return z[self.rank :: self.world]


def make_optimizer(net: nn.Module, lr: float, betas: tuple[float, float], eps: float,
                   fused: bool = False) -> torch.optim.Adam:
    """Adam as in the paper (section A.1): betas (0, 0.99), eps 1e-8.

    `fused` (one kernel for all parameters) is for CUDA; the CPU keeps torch's foreach implementation so CPU
    runs stay bitwise reproducible. Both keep the same state, so a checkpoint's Adam state loads either way
    and on any device (load_state_dict moves it to the parameters' device).
    """
    return torch.optim.Adam(net.parameters(), lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps,
                            fused=fused or None)


def ema_beta(cfg: TrainConfig, cur_nimg: int, batch: int) -> float:
    """The decay of this step's G_ema update.

    With `cfg.ema_decay` the paper's fixed per-step value (appendix A.1: 0.999). Otherwise a half-life of
    `ema_kimg` thousand images (stylegan2-ada's training_loop), capped at `ema_rampup` times the images
    shown so far: beta = 0.5 ** (batch / half_life_images).
    """
    if cfg.ema_decay is not None:
        return cfg.ema_decay
    half_life = cfg.ema_kimg * 1000
    if cfg.ema_rampup is not None:
        half_life = min(half_life, cur_nimg * cfg.ema_rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G over the parameters, in one fused launch.

    G's only buffers are constant resampling kernels that G_ema already holds, so none are copied.
    """
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1.0 - beta)


def train_step(nets: Nets, opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer, loss,
               reals: torch.Tensor, res: int, alpha: float, ctx: StepContext,
               ema_beta: float) -> dict[str, torch.Tensor]:
    """D step on `reals` (already in [-1, 1], faded, at `res`) and fresh fakes, then a G step, then G_ema
    with decay `ema_beta`.

    `loss` has `d_loss(D, reals, fakes, alpha)` and `g_loss(D, fakes, alpha)` (training/loss.py).
    Returns detached scalar tensors (no device sync): loss_D, loss_G and the loss's own stats.
    """
    G, D = nets.G, nets.D
    device = reals.device
    n = reals.shape[0]

    # D step: fakes without a graph into G.
    with torch.no_grad(), ctx.autocast(device):
        fakes = G(ctx.latents(n, device), res, alpha)
    with ctx.autocast(device):
        loss_D, stats_D = loss.d_loss(D, reals, fakes.to(reals.dtype), alpha)
    opt_D.zero_grad(set_to_none=True)
    loss_D.backward()
    if ctx.sync_grads is not None:
        ctx.sync_grads(D)
    opt_D.step()

    # G step: gradients flow through D to the fakes, but D's own parameters need none.
    D.requires_grad_(False)
    try:
        with ctx.autocast(device):
            fakes = G(ctx.latents(n, device), res, alpha)
            loss_G, stats_G = loss.g_loss(D, fakes, alpha)
        opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
    finally:
        D.requires_grad_(True)
    if ctx.sync_grads is not None:
        ctx.sync_grads(G)
    opt_G.step()

    update_ema(nets.G_ema, G, ema_beta)
    return {"loss_D": loss_D.detach().float(), "loss_G": loss_G.detach().float(), **stats_D, **stats_G}
