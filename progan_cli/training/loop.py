"""The progressive growing training loop (paper section 2; official train.py `train_progressive_gan`).

Each schedule update (every `minibatch_repeats` minibatches) reads the schedule at the images shown so far,
resets Adam when a fade starts or ends, and switches the pyramid level when the resolution grows. Maintenance
happens once per tick (a fixed number of real images): a log line, a sample grid from G_ema, and every few
ticks a checkpoint and the metrics. The real images come from `data.stream`, a pure function of the seed and
the images shown, so a run resumed at cur_nimg reads what it would have read had it never stopped.
"""

from __future__ import annotations

import copy
import json
import math
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from progan_cli.checkpoints import kimg_tag, save_checkpoint
from progan_cli.config import TrainConfig
from progan_cli.data.pyramid import Pyramid
from progan_cli.data.stream import check_data, fade_reals, reals_stream
from progan_cli.devices import resolve_device, tf32
from progan_cli.errors import ProganError
from progan_cli.files import atomic_write
from progan_cli.formats import Networks
from progan_cli.formats.progan import provenance_after
from progan_cli.images import save_grid
from progan_cli.networks import build_networks
from progan_cli.networks.latents import latents
from progan_cli.training.distributed import Distributed
from progan_cli.training.loss import LOSSES
from progan_cli.training.rng import rng_state, set_rng_state
from progan_cli.schedule import Schedule, adam_reset_needed, eta_seconds, schedule_at, start_nimg
from progan_cli.training.signals import held_while_forking, ignore_in_worker
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


@dataclass
class LoopState:
    """Where a run is: a checkpoint stores these fields (its "progress", tick_sums apart) to resume exactly."""

    cur_nimg: int = 0  # real images shown so far
    cur_tick: int = 0  # ticks finished
    tick_start_nimg: int = 0  # cur_nimg when the current tick began
    prev_lod: float | None = None  # lod at the last schedule update (Adam resets when its floor or ceil moves)
    total_sec: float = 0.0  # training seconds of the finished ticks, all sessions together
    tick_steps: int = 0  # steps taken in the current tick
    tick_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # the current tick's step statistics, summed

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], device: torch.device) -> LoopState:
        names = {f.name for f in fields(cls)} - {"tick_sums"}
        return cls(**{k: v for k, v in ckpt["progress"].items() if k in names},
                   tick_sums={k: v.to(device) for k, v in ckpt["tick_sums"].items()})

    def progress(self, partial_tick_sec: float = 0.0) -> dict[str, Any]:
        """The checkpoint's "progress"; mid-tick, the tick's seconds so far count in its total."""
        saved = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tick_sums"}
        return {**saved, "total_sec": self.total_sec + partial_tick_sec}

    def add(self, stats: dict[str, torch.Tensor], images: int) -> None:
        """Count one step of `images` real images and its statistics."""
        for k, v in stats.items():
            self.tick_sums[k] = self.tick_sums[k] + v if k in self.tick_sums else v.clone()
        self.tick_steps += 1
        self.cur_nimg += images

    def means(self) -> dict[str, float]:
        steps = max(self.tick_steps, 1)
        return {k: v.item() / steps for k, v in self.tick_sums.items()}


def training_loop(
    cfg: TrainConfig,  # every option of the run; rank 0 writes it to run_dir/config.json
    run_dir: Path,  # receives config.json, log.jsonl, samples/ and checkpoints/ (rank 0 only)
    *,
    resume: dict[str, Any] | None = None,  # a checkpoint from checkpoints.load_checkpoint to continue exactly
    init: Networks | None = None,  # grown networks to fine-tune (formats.load_networks), cfg shaped like them
    dist: Distributed | None = None,  # this process's rank, world size and device; None: one process
    metrics: Callable[[nn.Module, int], dict[str, float]] | None = None,  # (G_ema, res) -> values for the log
    stop: Callable[[], bool] | None = None,  # polled at each schedule update; True: checkpoint and return
    checkpoint_now: Callable[[], bool] | None = None,  # polled likewise; True: checkpoint and go on
    on_progress: Callable[[Progress, dict[str, Any] | None], None] | None = None,  # live display; the dict
    #                                           is the log line of a tick that just finished, else None
) -> TrainState:
    """Train G and D progressively from 4x4 to cfg.target until cfg.end_kimg thousand real images."""
    run = _Run(cfg, Path(run_dir), dist or Distributed(device=resolve_device(cfg.device)), resume, init)
    state, dist = run.state, run.dist
    end_nimg, tick_nimg = round(cfg.end_kimg * 1000), round(cfg.tick_kimg * 1000)
    clock = _Clock(state.cur_nimg)
    reals: Iterator[torch.Tensor] | None = None
    reals_res, stopped = None, False
    while state.cur_nimg < end_nimg:
        # Schedule: resolution, fade alpha, minibatch and learning rate at the images shown so far.
        sched = schedule_at(state.cur_nimg, cfg)
        run.follow(sched)
        if sched.res != reals_res:
            reals, reals_res = run.reals(sched), sched.res
            clock.warm_up = True  # this update starts the DataLoader workers: its rate says little about the next

        # Train: D and G steps on minibatch_repeats minibatches.
        for _ in range(cfg.minibatch_repeats):
            run.step(next(reals), sched)
        done = state.cur_nimg >= end_nimg
        stopping = dist.any(stop()) if stop is not None else False
        saving = dist.any(checkpoint_now()) if checkpoint_now is not None else False
        clock.update(sched.res, sched.minibatch * cfg.minibatch_repeats)
        if on_progress is not None and dist.is_main and clock.report_due():
            on_progress(run.progress(sched, clock.rate(state.cur_nimg), state.means(), clock), None)

        # Tick: a log line and a sample grid; metrics and a checkpoint every few ticks.
        if state.cur_nimg >= state.tick_start_nimg + tick_nimg or done:
            line, means = run.end_tick(sched, clock, metrics, last=done)
            if state.cur_tick % cfg.snapshot_ticks == 0 or done or stopping or saving:
                run.checkpoint()
            if on_progress is not None and dist.is_main:
                on_progress(run.progress(sched, line["img_per_s"], means, clock), line)
            clock.new_tick(state.cur_nimg)
        elif stopping or saving:
            run.reduce_tick(sched)  # averages the partial sums over ranks (saved so the tick resumes exactly)
            run.checkpoint(partial_tick_sec=clock.tick_sec())
        if stopping and not done:
            stopped = True
            break
    return TrainState(nets=run.nets, opt_G=run.opt_G, opt_D=run.opt_D, cur_nimg=state.cur_nimg,
                      cur_tick=state.cur_tick, stopped=stopped)


class _Clock:
    """This session's timing: the tick's seconds, the rate shown live, and images/s per resolution (the ETA)."""

    def __init__(self, cur_nimg: int) -> None:
        self.tick_start = self.last_report = self.last_update = self.now = time.time()
        self.tick_start_nimg = cur_nimg  # this session's, for the rate shown before its first tick ends
        self.measured: dict[int, list[float]] = {}  # res -> [images, seconds] trained at it in this session
        self.warm_up = True  # the next update's time is not measured (DataLoader workers starting)

    def update(self, res: int, images: int) -> None:
        """A schedule update of `images` real images at `res` has just ended."""
        self.now = time.time()
        if not self.warm_up:
            seen = self.measured.setdefault(res, [0, 0.0])
            seen[0] += images
            seen[1] += self.now - self.last_update
        self.last_update, self.warm_up = self.now, False

    def report_due(self) -> bool:
        """True about twice a second."""
        if self.now - self.last_report < 0.5:
            return False
        self.last_report = self.now
        return True

    def rate(self, cur_nimg: int) -> float:
        return (cur_nimg - self.tick_start_nimg) / max(self.tick_sec(), 1e-9)

    def tick_sec(self) -> float:
        return self.now - self.tick_start

    def rates(self) -> dict[int, float]:
        return {res: n / sec for res, (n, sec) in self.measured.items() if sec > 0}

    def new_tick(self, cur_nimg: int) -> None:
        self.tick_start, self.tick_start_nimg = time.time(), cur_nimg


class _Run:
    """One session of a run: its networks, optimizers and state, the steps, and what it writes to the run folder
    (rank 0 alone writes)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, dist: Distributed, resume: dict[str, Any] | None,
                 init: Networks | None) -> None:
        self.cfg, self.run_dir, self.dist = cfg, run_dir, dist
        self.data_key = check_data(cfg)
        device = dist.device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

        torch.manual_seed(cfg.seed)  # every rank builds the same networks
        G, D = build_networks(cfg)
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        for net in (G, D, G_ema):
            net.to(device, memory_format=self.memory_format)
        self.nets = Nets(G, D, G_ema)
        self.loss = LOSSES[cfg.loss]()
        self.opt_G, self.opt_D = self._new_optimizers()
        self.state = LoopState()
        self.last_checkpoint = None if resume is None else resume["path"]  # named when the run diverges
        self.provenance = resume.get("provenance") if resume is not None else None  # of fine-tuned weights
        if resume is not None:
            for part, key in ((G, "G"), (D, "D"), (G_ema, "G_ema"), (self.opt_G, "opt_G"), (self.opt_D, "opt_D")):
                part.load_state_dict(resume[key])
            self.state = LoopState.from_checkpoint(resume, device)
            set_rng_state(resume["rng"], device)
        elif init is not None:
            if cfg.init is None:
                raise ValueError("training_loop(init=...) needs cfg.init, the file the networks came from")
            # The file's G, D and G_ema (a lone generator stands for both G and G_ema; D without one stays as
            # built); the schedule starts where it reaches the target, in its stable phase, Adam fresh.
            G.load_state_dict(init.weights.get("G", init.weights.get("G_ema")))
            G_ema.load_state_dict(init.weights.get("G_ema", init.weights.get("G")))
            if "D" in init.weights:
                D.load_state_dict(init.weights["D"])
            start = start_nimg(cfg)
            self.state = LoopState(cur_nimg=start, tick_start_nimg=start)
            self.provenance = provenance_after(init, run_dir)
        for net in (G, D, G_ema):
            dist.broadcast_(net)
        self.ctx = StepContext(latent_size=cfg.latent_size, precision=cfg.precision,
                               rank=dist.rank, world=dist.world, sync_grads=dist.sync_grads)

        self.cols, rows = cfg.grid or _default_grid(cfg.target)
        self.grid_z = latents(cfg.seed, range(self.cols * rows), cfg.latent_size)  # `progan sample --seed SEED`
        if dist.is_main:
            (run_dir / "samples").mkdir(parents=True, exist_ok=True)
            cfg.save(run_dir / "config.json")  # on resume too: it may have changed --total-kimg and the like
            if resume is None:
                (run_dir / "log.jsonl").write_text("")
                _save_reals(cfg, run_dir / "samples" / "reals.png", self.cols, rows)
            else:
                _truncate_log(run_dir / "log.jsonl", self.state.cur_tick)

    def _new_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        fused = self.dist.device.type == "cuda"
        return tuple(make_optimizer(net, self.cfg.lr, self.cfg.adam_betas, self.cfg.adam_eps, fused=fused)
                     for net in (self.nets.G, self.nets.D))

    def follow(self, sched: Schedule) -> None:
        """Start a schedule update: fresh Adams when a fade starts or ends (official rule), its learning rate."""
        prev = self.state.prev_lod
        if self.cfg.reset_adam and prev is not None and adam_reset_needed(prev, sched.lod):
            self.opt_G, self.opt_D = self._new_optimizers()
        self.state.prev_lod = sched.lod
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                group["lr"] = sched.lr

    def reals(self, sched: Schedule) -> Iterator[torch.Tensor]:
        """This rank's stream of the level `sched.res` from the images shown so far. Its DataLoader workers
        ignore the signals a terminal, `timeout` or Slurm send to the whole process group: the main process
        alone stops, with a checkpoint (training/signals.py)."""
        cfg, dist = self.cfg, self.dist
        with held_while_forking():  # a worker starting now would otherwise die of a SIGTERM to the group
            return reals_stream(Path(cfg.data), sched.res, sched.minibatch, self.state.cur_nimg, seed=cfg.seed,
                                mirror=cfg.mirror, workers=cfg.workers, rank=dist.rank, world=dist.world,
                                pin_memory=dist.device.type == "cuda", worker_init_fn=ignore_in_worker)

    def step(self, batch: torch.Tensor, sched: Schedule) -> None:
        """One D and G step on a uint8 minibatch of reals (faded as G's output is), G_ema following."""
        reals = batch.to(self.dist.device, non_blocking=True).to(memory_format=self.memory_format)
        reals = fade_reals(reals.float() / 127.5 - 1.0, sched.alpha)
        with tf32(self.cfg.precision == "tf32"):
            stats = train_step(self.nets, self.opt_G, self.opt_D, self.loss, reals, sched.res, sched.alpha,
                               self.ctx, ema_beta(self.cfg, self.state.cur_nimg, sched.minibatch))
        self.state.add(stats, sched.minibatch)

    def reduce_tick(self, sched: Schedule) -> dict[str, float]:
        """Average this tick's sums over ranks and steps; stop on a non-finite value."""
        self.dist.mean_(list(self.state.tick_sums.values()))
        means = self.state.means()
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            raise ProganError(f"{bad[0]} became {means[bad[0]]} at kimg {self.state.cur_nimg / 1000:.1f} "
                              f"({sched.res}x{sched.res}); training stopped, the last good checkpoint is "
                              f"{self.last_checkpoint or 'none yet'}; try --precision fp32 or a lower --lr")
        return means

    def end_tick(self, sched: Schedule, clock: _Clock, metrics: Callable[[nn.Module, int], dict[str, float]] | None,
                 last: bool) -> tuple[dict[str, Any], dict[str, float]]:
        """Close the tick: its log line (written with a sample grid, and metrics when due) and its mean stats."""
        cfg, state = self.cfg, self.state
        means = self.reduce_tick(sched)
        state.cur_tick += 1
        tick_sec = clock.tick_sec()
        state.total_sec += tick_sec
        tick_kimg = (state.cur_nimg - clock.tick_start_nimg) / 1000
        line = {"tick": state.cur_tick, "kimg": round(state.cur_nimg / 1000, 3), "res": sched.res, "lod": sched.lod,
                "alpha": sched.alpha, "phase": sched.phase, "minibatch": sched.minibatch, "lr": sched.lr, **means,
                "img_per_s": tick_kimg * 1000 / max(tick_sec, 1e-9), "sec_per_kimg": tick_sec / max(tick_kimg, 1e-9),
                "sec_per_tick": tick_sec, "total_sec": state.total_sec, "mem_gb": _memory_gb(self.dist.device)}
        if self.dist.is_main:
            _save_fakes(self.nets.G_ema, self.grid_z, sched, cfg.target, self.cols,
                        self.run_dir / "samples" / f"fakes{kimg_tag(state.cur_nimg)}.png")
            if metrics is not None and (state.cur_tick % cfg.metrics_ticks == 0 or last):
                line.update(metrics(self.nets.G_ema, sched.sampling_res))
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        state.tick_sums, state.tick_steps, state.tick_start_nimg = {}, 0, state.cur_nimg
        return line, means

    def checkpoint(self, partial_tick_sec: float = 0.0) -> None:
        """Save the run (rank 0); mid-tick, the tick's seconds so far count in the saved total."""
        if not self.dist.is_main:
            return
        nets, state = self.nets, self.state
        self.last_checkpoint = save_checkpoint(self.run_dir, {
            "config": self.cfg.to_dict(), "G": nets.G.state_dict(), "D": nets.D.state_dict(),
            "G_ema": nets.G_ema.state_dict(), "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "progress": state.progress(partial_tick_sec), "tick_sums": {k: v.cpu() for k, v in state.tick_sums.items()},
            "rng": rng_state(self.dist.device), "data": self.data_key,
            **({"provenance": self.provenance} if self.provenance else {}),
        }, keep=self.cfg.keep_checkpoints)

    def progress(self, sched: Schedule, rate: float, losses: dict[str, float], clock: _Clock) -> Progress:
        kimg = self.state.cur_nimg / 1000
        return Progress(kimg=kimg, end_kimg=self.cfg.end_kimg, res=sched.res, phase=sched.phase, alpha=sched.alpha,
                        img_per_s=rate, losses=losses, eta_s=eta_seconds(self.cfg, self.state.cur_nimg, clock.rates()))


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
