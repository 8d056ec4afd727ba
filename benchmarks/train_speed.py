"""Training speed: images/s of whole ProGAN training steps, progan against pro-gan-pth 3.4, side by side.

A step is what training runs per minibatch: a D step with the WGAN-GP loss (gradient penalty, drift), a G
step, Adam on both and the G_ema update. Ours is `progan_cli.training.step.train_step`, the function the
training loop calls; the anchor's is `ProGAN.optimize_discriminator`, `update_average`,
`ProGAN.optimize_generator`, the body of its own training loop. Both at the stable phase (alpha 1) with the
official widths (nf = min(8192 / 2^stage, 512)), latent 512, Adam(0.001, (0, 0.99), 1e-8), random reals.
Steps alternate between the two sides so that load from other processes falls on both alike; the median
step time of each side gives its images/s.

    pip install --no-deps --target /tmp/pgp pro-gan-pth==3.4
    python3 benchmarks/train_speed.py --anchor /tmp/pgp                   # default minibatch per resolution
    python3 benchmarks/train_speed.py --anchor /tmp/pgp --batch 8 --steps 2   # 2-core CPU: 11 CPU-minutes

The official minibatch (128 at 8 and 16) costs pro-gan-pth minutes per step on a 2-core CPU; `--batch`
lowers it for a CPU run. Measured here with `--batch 8 --steps 2 --threads 2`, while other work loaded the
machine (wall ~20 min): ratio 1.14x at 8x8, 1.59x at 16x16, 1.48x at 32x32, 1.50x at 64x64; at 8x8 with
`--batch 32`: 1.26x. The gain is arithmetic: the fused up/down convolutions do 4/9 of the multiply-adds of
upsample+conv and conv+pool, and the G step computes no weight gradients for D.

Adaptations of the anchor, made here and nowhere else: its equalized transposed conv calls
`_output_padding` with a signature torch no longer has (it passed the builtin `input`; with no output size
the answer is the layer's own `output_padding`); its `gan` module imports tensorboard at the top, which it
only needs for logging, so a stand-in module is provided when tensorboard is absent; its widths default to
fmap_base 16384 (512 maps up to 64x64, twice the official 256 there), so its `nf` is given the official
fmap_base 8192 and both sides train the same network.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from progan_cli.config import DEFAULT_MINIBATCH  # noqa: E402
from progan_cli.networks import Discriminator, Generator  # noqa: E402
from progan_cli.training.loss import WGANGP  # noqa: E402
from progan_cli.training.step import Nets, StepContext, make_optimizer, train_step  # noqa: E402

LATENT = 512
ADAM = dict(lr=0.001, betas=(0.0, 0.99), eps=1e-8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Ours:
    """progan's networks driven by the training loop's own step function."""

    name = "progan"

    def __init__(self, res: int, device: torch.device, precision: str, channels_last: bool) -> None:
        G = Generator(res, latent_size=LATENT).to(device)
        D = Discriminator(res).to(device)
        if channels_last:
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        self.nets = Nets(G=G, D=D, G_ema=copy.deepcopy(G).requires_grad_(False))
        self.opt_G = make_optimizer(G, ADAM["lr"], ADAM["betas"], ADAM["eps"])
        self.opt_D = make_optimizer(D, ADAM["lr"], ADAM["betas"], ADAM["eps"])
        self.loss = WGANGP()
        self.ctx = StepContext(latent_size=LATENT, precision=precision)
        self.res = res
        self.channels_last = channels_last

    def step(self, reals: torch.Tensor) -> None:
        if self.channels_last:
            reals = reals.contiguous(memory_format=torch.channels_last)
        train_step(self.nets, self.opt_G, self.opt_D, self.loss, reals, self.res, 1.0, self.ctx, ema_beta=0.999)


def import_anchor(path: str | None) -> types.ModuleType:
    """pro-gan-pth 3.4's `gan` module, with the two adaptations current torch needs (module docstring)."""
    if path:
        sys.path.insert(0, path)
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = object
        sys.modules["torch.utils.tensorboard"] = stub
    try:
        from pro_gan_pytorch import custom_layers, gan, networks
    except ImportError as e:
        raise SystemExit(
            f"pro-gan-pth is not importable ({e}): pip install --no-deps --target /tmp/pgp pro-gan-pth==3.4 "
            "and pass --anchor /tmp/pgp"
        ) from None
    custom_layers.EqualizedConvTranspose2d._output_padding = lambda self, *args, **kwargs: self.output_padding
    official_nf = networks.nf
    networks.nf = lambda stage, fmap_base=8192, **kw: official_nf(stage, fmap_base=fmap_base, **kw)
    return gan


class Anchor:
    """pro-gan-pth 3.4: the body of `ProGAN.train`'s inner loop for one minibatch (batch_repeats = 1)."""

    name = "pro-gan-pth"

    def __init__(self, gan: types.ModuleType, res: int, device: torch.device) -> None:
        from pro_gan_pytorch.losses import WganGP
        from pro_gan_pytorch.networks import Discriminator as PGD
        from pro_gan_pytorch.networks import Generator as PGG

        self.depth = int(math.log2(res))
        with contextlib.redirect_stdout(io.StringIO()):  # it prints both networks
            self.pg = gan.ProGAN(PGG(self.depth, latent_size=LATENT), PGD(self.depth, latent_size=LATENT),
                                 device=device, ema_beta=0.999)
        self.opt_G = torch.optim.Adam(self.pg.gen.parameters(), **ADAM)
        self.opt_D = torch.optim.Adam(self.pg.dis.parameters(), **ADAM)
        self.loss = WganGP()
        self.update_average = gan.update_average

    def step(self, reals: torch.Tensor) -> None:
        noise = torch.randn(reals.shape[0], LATENT, device=reals.device)
        self.pg.optimize_discriminator(self.loss, self.opt_D, noise, reals, self.depth, 1.0)
        self.update_average(self.pg.gen_shadow, self.pg.gen, beta=0.999)
        self.pg.optimize_generator(self.loss, self.opt_G, noise, reals, self.depth, 1.0)


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bench_res(res: int, batch: int, steps: int, sides: list, device: torch.device) -> dict:
    """Alternate steps of every side (one warm-up step each first); median seconds per step."""
    reals = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    times: dict[str, list[float]] = {side.name: [] for side in sides}
    for i in range(steps + 1):
        for side in sides:
            sync(device)
            start = time.perf_counter()
            side.step(reals)
            sync(device)
            if i:
                times[side.name].append(time.perf_counter() - start)
    row = {"res": res, "batch": batch, "steps": steps}
    for name, t in times.items():
        row[name] = batch / statistics.median(t)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--batch", type=int, help="minibatch at every resolution (default: the official table)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side and resolution")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="ours only")
    parser.add_argument("--channels-last", action="store_true", help="ours only")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--anchor", help="folder holding pro_gan_pytorch (pip --target); default: sys.path")
    parser.add_argument("--no-anchor", action="store_true", help="time progan alone")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gan = None if args.no_anchor else import_anchor(args.anchor)

    rows = []
    for res in args.res:
        torch.manual_seed(0)
        batch = args.batch or DEFAULT_MINIBATCH[res]
        sides = [Ours(res, device, args.precision, args.channels_last)]
        if gan is not None:
            sides.append(Anchor(gan, res, device))
        if res == args.res[0]:
            counts = ", ".join(f"{s.name} G {params(g):,} D {params(d):,}" for s, (g, d) in
                               zip(sides, [(s.nets.G, s.nets.D) if isinstance(s, Ours) else (s.pg.gen, s.pg.dis)
                                           for s in sides]))
            print(f"# {device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
                  f"parameters at {res}: {counts}", file=sys.stderr)
        row = bench_res(res, batch, args.steps, sides, device)
        if gan is not None:
            row["ratio"] = row["progan"] / row["pro-gan-pth"]
        rows.append(row)
        if not args.json:
            anchor = (f"   pro-gan-pth {row['pro-gan-pth']:7.2f} img/s   ratio {row['ratio']:.2f}x"
                      if gan is not None else "")
            print(f"{res:4d}x{res:<4d} batch {batch:3d}   progan {row['progan']:7.2f} img/s{anchor}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
