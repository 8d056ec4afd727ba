"""The progressive growing training loop (paper section 3; official train.py `train_progressive_gan`).

Each schedule update (every `minibatch_repeats` minibatches) reads the schedule at the images shown so far,
resets Adam when a fade starts or ends, and switches the pyramid level when the resolution grows. Maintenance
happens once per tick (a fixed number of real images): a log line, a sample grid from G_ema, and every few
ticks a checkpoint and the metrics.

The data order is a pure function of (seed, images shown): position p of the stream is image
perm_e[p mod N] of epoch e = p // N, mirrored by bit e[p mod N], both drawn from a generator seeded by
(seed, e). A run resumed at cur_nimg rebuilds the same stream from there, whatever the number of ranks.
"""

from __future__ import annotations

import copy
import json
import math
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from progan_cli.checkpoints import kimg_tag, save_checkpoint
from progan_cli.config import TrainConfig
from progan_cli.errors import DataError, ProganError
from progan_cli.files import atomic_write
from progan_cli.images import save_grid
from progan_cli.devices import resolve_device, tf32
from progan_cli.networks import build_networks
from progan_cli.networks.latents import latents
from progan_cli.training.distributed import Distributed, split_batch
from progan_cli.training.rng import rng_state, set_rng_state
from progan_cli.training.schedule import Schedule, adam_reset_needed, eta_seconds, schedule_at
from progan_cli.training.signals import ignore_in_worker
from progan_cli.training.step import Nets, StepContext, ema_beta, make_optimizer, train_step

# Log fields that measure the machine rather than the run: they differ between identical runs.
TIMING_FIELDS = ("img_per_s", "sec_per_kimg", "sec_per_tick", "total_sec", "mem_gb")


@dataclass
class Progress:
    """What the live display shows, refreshed about twice a second on rank 0."""

    kimg: float
    end_kimg: float
    res: int
    phase: str
    alpha: float
    img_per_s: float
    losses: dict[str, float]
    eta_s: float


@dataclass
class TrainState:
    """What a finished (or stopped) loop leaves behind."""

    nets: Nets
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    cur_nimg: int
    cur_tick: int
    stopped: bool  # True when `stop` ended the run before end_kimg


def training_loop(
    cfg: TrainConfig,  # every option of the run; rank 0 writes it to run_dir/config.json
    run_dir: Path,  # receives config.json, log.jsonl, samples/ and checkpoints/ (rank 0 only)
    *,
    resume: dict[str, Any] | None = None,  # a checkpoint from checkpoints.load_checkpoint to continue exactly
    dist: Distributed | None = None,  # this process's rank, world size and device; None: one process
    metrics: Callable[[nn.Module, int], dict[str, float]] | None = None,  # (G_ema, res) -> values for the log
    stop: Callable[[], bool] | None = None,  # polled at each schedule update; True: checkpoint and return
    checkpoint_now: Callable[[], bool] | None = None,  # polled likewise; True: checkpoint and go on
    on_progress: Callable[[Progress, dict[str, Any] | None], None] | None = None,  # live display; the dict
    #                                           is the log line of a tick that just finished, else None
) -> TrainState:
    """Train G and D progressively from 4x4 to cfg.target until cfg.end_kimg thousand real images."""
    dist = dist or Distributed(device=resolve_device(cfg.device))
    device = dist.device
    data_key = check_data(cfg)
    run_dir = Path(run_dir)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    # Networks and optimizers; every rank builds the same ones from the same seed.
    torch.manual_seed(cfg.seed)
    G, D = build_networks(cfg)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    for net in (G, D, G_ema):
        net.to(device, memory_format=memory_format)
    nets = Nets(G, D, G_ema)
    from progan_cli.training.loss import LOSSES

    loss = LOSSES[cfg.loss]()

    def new_optimizers() -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return tuple(make_optimizer(net, cfg.lr, cfg.adam_betas, cfg.adam_eps, fused=device.type == "cuda")
                     for net in (G, D))

    opt_G, opt_D = new_optimizers()
    progress: dict[str, Any] = {"cur_nimg": 0, "cur_tick": 0, "tick_start_nimg": 0, "prev_lod": None,
                                "total_sec": 0.0, "tick_steps": 0}
    tick_sums: dict[str, torch.Tensor] = {}
    if resume is not None:
        G.load_state_dict(resume["G"])
        D.load_state_dict(resume["D"])
        G_ema.load_state_dict(resume["G_ema"])
        opt_G.load_state_dict(resume["opt_G"])
        opt_D.load_state_dict(resume["opt_D"])
        progress.update(resume["progress"])
        tick_sums = {k: v.to(device) for k, v in resume["tick_sums"].items()}
        set_rng_state(resume["rng"], device)
    for net in (G, D, G_ema):
        dist.broadcast_(net)

    cols, rows = cfg.grid or _default_grid(cfg.target)
    grid_z = latents(cfg.seed, range(cols * rows), cfg.latent_size)  # images 0.. of `progan sample --seed SEED`
    if dist.is_main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")  # on resume too: it may have changed --total-kimg and the like
        if resume is None:
            (run_dir / "log.jsonl").write_text("")
            _save_reals(cfg, run_dir / "samples" / "reals.png", cols, rows)
        else:
            _truncate_log(run_dir / "log.jsonl", progress["cur_tick"])

    ctx = StepContext(latent_size=cfg.latent_size, precision=cfg.precision,
                      rank=dist.rank, world=dist.world, sync_grads=dist.sync_grads)
    end_nimg = round(cfg.end_kimg * 1000)
    tick_nimg = round(cfg.tick_kimg * 1000)
    cur_nimg, cur_tick = progress["cur_nimg"], progress["cur_tick"]
    reals_iter: Iterator[torch.Tensor] | None = None
    reals_res = None
    last_ckpt: Path | None = None
    tick_start_time = last_report = last_update = time.time()
    tick_start_nimg_session = cur_nimg  # for the rate shown before the first tick of this process ends
    measured: dict[int, list[float]] = {}  # res -> [images, seconds] this process trained at it (for the ETA)
    warm_up = True
    stopped = False

    def reduce_tick(sched: Schedule) -> dict[str, float]:
        """Average this tick's sums over ranks and steps; stop on a non-finite value."""
        dist.mean_(list(tick_sums.values()))
        steps = max(progress["tick_steps"], 1)
        means = {k: v.item() / steps for k, v in tick_sums.items()}
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            good = last_ckpt or (resume["path"] if resume is not None else "none yet")
            raise ProganError(f"{bad[0]} became {means[bad[0]]} at kimg {cur_nimg / 1000:.1f} ({sched.res}x"
                              f"{sched.res}); training stopped, the last good checkpoint is {good}; "
                              "try --precision fp32 or a lower --lr")
        return means

    def checkpoint(partial_tick_sec: float = 0.0) -> Path | None:
        """Save the run; mid-tick, the tick's seconds so far count in the saved total (not in this process's)."""
        progress.update(cur_nimg=cur_nimg, cur_tick=cur_tick)
        if not dist.is_main:
            return None
        return save_checkpoint(run_dir, {
            "config": cfg.to_dict(), "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
            "progress": {**progress, "total_sec": progress["total_sec"] + partial_tick_sec},
            "tick_sums": {k: v.cpu() for k, v in tick_sums.items()}, "rng": rng_state(device), "data": data_key,
        }, keep=cfg.keep_checkpoints)

    def report(sched: Schedule, rate: float, losses: dict[str, float], line: dict[str, Any] | None) -> None:
        rates = {res: n / sec for res, (n, sec) in measured.items() if sec > 0}
        on_progress(Progress(kimg=cur_nimg / 1000, end_kimg=cfg.end_kimg, res=sched.res, phase=sched.phase,
                             alpha=sched.alpha, img_per_s=rate, losses=losses,
                             eta_s=eta_seconds(cfg, cur_nimg, rates)), line)

    while cur_nimg < end_nimg:
        sched = schedule_at(cur_nimg, cfg)
        if cfg.reset_adam and progress["prev_lod"] is not None and adam_reset_needed(progress["prev_lod"], sched.lod):
            opt_G, opt_D = new_optimizers()
        progress["prev_lod"] = sched.lod
        for opt in (opt_G, opt_D):
            for group in opt.param_groups:
                group["lr"] = sched.lr
        if sched.res != reals_res:
            reals_iter, reals_res = _reals_stream(cfg, sched.res, sched.minibatch, cur_nimg, dist), sched.res
            warm_up = True  # this update starts the DataLoader workers: its rate says little about the next

        for _ in range(cfg.minibatch_repeats):
            reals = next(reals_iter).to(device, non_blocking=True).to(memory_format=memory_format)
            reals = fade_reals(reals.float() / 127.5 - 1.0, sched.alpha)
            with tf32(cfg.precision == "tf32"):
                stats = train_step(nets, opt_G, opt_D, loss, reals, sched.res, sched.alpha, ctx,
                                   ema_beta(cfg, cur_nimg, sched.minibatch))
            for k, v in stats.items():
                tick_sums[k] = tick_sums[k] + v if k in tick_sums else v.clone()
            progress["tick_steps"] += 1
            cur_nimg += sched.minibatch

        done = cur_nimg >= end_nimg
        stopping = dist.any(stop()) if stop is not None else False
        saving = dist.any(checkpoint_now()) if checkpoint_now is not None else False
        now = time.time()
        if not warm_up:
            seen = measured.setdefault(sched.res, [0, 0.0])
            seen[0] += sched.minibatch * cfg.minibatch_repeats
            seen[1] += now - last_update
        last_update, warm_up = now, False
        if on_progress is not None and dist.is_main and now - last_report >= 0.5:
            last_report = now
            rate = (cur_nimg - tick_start_nimg_session) / max(now - tick_start_time, 1e-9)
            steps = max(progress["tick_steps"], 1)
            report(sched, rate, {k: v.item() / steps for k, v in tick_sums.items()}, None)

        if cur_nimg >= progress["tick_start_nimg"] + tick_nimg or done:
            means = reduce_tick(sched)
            cur_tick += 1
            tick_sec = now - tick_start_time
            progress["total_sec"] += tick_sec
            tick_kimg = (cur_nimg - tick_start_nimg_session) / 1000
            line = {"tick": cur_tick, "kimg": round(cur_nimg / 1000, 3), "res": sched.res, "lod": sched.lod,
                    "alpha": sched.alpha, "phase": sched.phase, "minibatch": sched.minibatch, "lr": sched.lr,
                    **means, "img_per_s": tick_kimg * 1000 / max(tick_sec, 1e-9),
                    "sec_per_kimg": tick_sec / max(tick_kimg, 1e-9), "sec_per_tick": tick_sec,
                    "total_sec": progress["total_sec"], "mem_gb": _memory_gb(device)}
            if dist.is_main:
                _save_fakes(G_ema, grid_z, sched, cfg.target, cols,
                            run_dir / "samples" / f"fakes{kimg_tag(cur_nimg)}.png")
                if metrics is not None and (cur_tick % cfg.metrics_ticks == 0 or done):
                    line.update(metrics(G_ema, sched.sampling_res))
                with open(run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(line) + "\n")
            tick_sums = {}
            progress.update(tick_steps=0, tick_start_nimg=cur_nimg)
            if cur_tick % cfg.snapshot_ticks == 0 or done or stopping or saving:
                last_ckpt = checkpoint() or last_ckpt
            if on_progress is not None and dist.is_main:
                report(sched, line["img_per_s"], means, line)
            tick_start_time, tick_start_nimg_session = time.time(), cur_nimg
        elif stopping or saving:
            reduce_tick(sched)  # averages the partial sums over ranks (saved so the tick resumes exactly)
            last_ckpt = checkpoint(partial_tick_sec=now - tick_start_time) or last_ckpt
        if stopping and not done:
            stopped = True
            break

    return TrainState(nets=nets, opt_G=opt_G, opt_D=opt_D, cur_nimg=cur_nimg, cur_tick=cur_tick, stopped=stopped)


def check_data(cfg: TrainConfig) -> dict[str, Any]:
    """Fail before any work when the pyramid cannot feed this run: missing, foreign, too small, levels lacking.

    Returns the data key every checkpoint stores: the file, its image count and the sha256 of its target
    level (stored by `progan prep`, so this reads no images).
    """
    from progan_cli.data.pyramid import Pyramid

    with Pyramid(Path(cfg.data)) as pyr:
        if cfg.target > pyr.target:
            raise DataError(f"--target {cfg.target} is above the {pyr.target}x{pyr.target} images of {cfg.data}; "
                            f"pass --target {pyr.target} or smaller, or prep the photos again with --target "
                            f"{cfg.target}")
        for res in cfg.resolutions:
            pyr.level(res)  # DataError naming the missing level
        if len(pyr) == 0:
            raise DataError(f"{cfg.data} holds no images; prep a folder of photos first")
        return {"path": cfg.data, "count": len(pyr), "target_sha256": pyr.target_sha256}


def check_resumed_data(saved: dict[str, Any] | None, now: dict[str, Any], explicit: bool,
                       run_dir: Path) -> str | None:
    """A resumed run must go on with the images it was trained on (check_data's keys, then and now).

    Other images are refused unless DATA was given on the command line: then the user means it, and the
    returned warning says what changed. A checkpoint written before checkpoints kept the key (None) is
    taken on trust.
    """
    if saved is None or saved["target_sha256"] == now["target_sha256"]:
        return None
    change = (f"{now['path']} holds other images than this run was trained on ({saved['count']} images in "
              f"{saved['path']}, {now['count']} now)")
    if not explicit:
        raise DataError(f"{change}; restore the original file, or name the data to resume on explicitly: "
                        f"progan train {now['path']} --resume {run_dir}")
    return f"{change}; resuming on them as asked"


def fade_reals(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """lerp(upsample(avgpool(x)), x, alpha): during a fade D sees reals only as sharp as G can make them."""
    if alpha >= 1.0:
        return x
    return torch.lerp(F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest"), x, alpha)


class _Mirrored(Dataset):
    """A pyramid level read at (index, mirror) keys."""

    def __init__(self, level: Dataset) -> None:
        self.level = level

    def __len__(self) -> int:
        return len(self.level)

    def __getitem__(self, key: tuple[int, bool]) -> torch.Tensor:
        index, mirror = key
        image = self.level[index]
        return image.flip(-1) if mirror else image


class _StreamSampler(Sampler):
    """This rank's (index, mirror) keys of every global minibatch, from stream position `start` on."""

    def __init__(self, n: int, seed: int, mirror: bool, start: int, global_batch: int, rank: int,
                 world: int) -> None:
        self.n, self.seed, self.mirror = n, seed, mirror
        self.start, self.global_batch, self.rank, self.world = start, global_batch, rank, world

    def _epoch(self, epoch: int) -> tuple[list[int], list[bool]]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (1 << 63))
        order = torch.randperm(self.n, generator=g).tolist()
        flips = torch.randint(0, 2, (self.n,), generator=g).bool().tolist()
        return order, flips if self.mirror else [False] * self.n

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        pos, cache = self.start, {}
        while True:
            keys = []
            for p in (pos + i for i in split_batch(self.global_batch, self.rank, self.world)):
                epoch = p // self.n
                if epoch not in cache:
                    cache = {epoch: self._epoch(epoch), **{e: c for e, c in cache.items() if e >= epoch - 1}}
                order, flips = cache[epoch]
                keys.append((order[p % self.n], flips[p % self.n]))
            yield keys
            pos += self.global_batch


def _reals_stream(cfg: TrainConfig, res: int, global_batch: int, start: int,
                  dist: Distributed) -> Iterator[torch.Tensor]:
    """uint8 NCHW minibatches of this rank's share of the `res` level, from stream position `start`."""
    from progan_cli.data.dataset import LevelDataset

    level = LevelDataset(Path(cfg.data), res)
    sampler = _StreamSampler(len(level), cfg.seed, cfg.mirror, start, global_batch, dist.rank, dist.world)
    # A generator of its own: a DataLoader otherwise draws its worker seed from the global RNG each time a
    # level starts, which would make the latents depend on where a run was resumed.
    # The workers ignore the signals a terminal, `timeout` or Slurm send to the whole process group: the
    # main process alone stops (with a checkpoint), see training/signals.py.
    loader = DataLoader(_Mirrored(level), batch_sampler=sampler, num_workers=cfg.workers,
                        pin_memory=dist.device.type == "cuda", prefetch_factor=4 if cfg.workers else None,
                        generator=torch.Generator(), worker_init_fn=ignore_in_worker if cfg.workers else None)
    return iter(loader)


def _default_grid(target: int) -> tuple[int, int]:
    """Columns and rows filling about 1920x1080 at the target size (official snapshot grid), at most 16x16."""
    return min(max(1920 // target, 3), 16), min(max(1080 // target, 2), 16)


@torch.no_grad()
def _save_fakes(G_ema: nn.Module, z: torch.Tensor, sched: Schedule, target: int, cols: int, path: Path) -> None:
    """G_ema's images of the fixed latents at the current resolution and alpha, upscaled to the target."""
    device = next(G_ema.parameters()).device
    images = torch.cat([G_ema(chunk.to(device), sched.res, sched.alpha).float().cpu() for chunk in z.split(64)])
    if sched.res < target:
        images = F.interpolate(images, scale_factor=target // sched.res, mode="nearest")
    save_grid(images, path, cols)


def _save_reals(cfg: TrainConfig, path: Path, cols: int, rows: int) -> None:
    """The first images of the target level, laid out like the sample grids."""
    from progan_cli.data.pyramid import Pyramid

    with Pyramid(Path(cfg.data)) as pyr:
        images = pyr.level(cfg.target)[: cols * rows]
    save_grid(torch.from_numpy(images).permute(0, 3, 1, 2), path, cols)


def _truncate_log(path: Path, cur_tick: int) -> None:
    """Drop log lines of ticks after the checkpoint being resumed (a crash can leave some behind)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["tick"] <= cur_tick]
    with atomic_write(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in lines))


def _memory_gb(device: torch.device) -> float:
    """Peak memory: allocated on the GPU, else the process's resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
