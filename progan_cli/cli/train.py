"""`progan train [DATA.h5] --target 128`: progressive growing on a pyramid; `--resume RUN` continues a run.

Options left out keep the config defaults on a new run and the run's own values on a resumed one, so every
option here defaults to None and only what the user typed reaches the config.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any, Optional

import typer

from progan_cli.cli.common import Threads, err_console, parse_grid

RUNS_DIR = Path("runs")


def train(
    data: Optional[Path] = typer.Argument(None, help="Pyramid file from `progan prep` [default: the one *.h5 "
                                          "in the working directory]."),
    target: Optional[int] = typer.Option(None, help="Final resolution, a power of two [default: 128]."),
    resume: Optional[Path] = typer.Option(None, help="Run folder (or checkpoint file) to continue exactly."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder [default: runs/NNNNN-<data>-<target>]."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda[:N] [default: auto = CUDA if visible]."),
    precision: Optional[str] = typer.Option(None, help="fp32 (true fp32), tf32 (TF32 matmuls/convs on CUDA) or bf16 (autocast; penalty in fp32) [fp32]."),
    loss: Optional[str] = typer.Option(None, help="wgan-gp (paper), logistic or lsgan [default: wgan-gp]."),
    stable_kimg: Optional[float] = typer.Option(None, help="Thousands of images per stable phase [600]."),
    fade_kimg: Optional[float] = typer.Option(None, help="Thousands of images per fade-in [600]."),
    total_kimg: Optional[float] = typer.Option(None, help="Stop after this many thousand images "
                                               "[default: reach the target, then one stable phase]."),
    fmap_base: Optional[int] = typer.Option(None, help="Network width: nf(stage) = min(base / 2^stage, max) [8192]."),
    fmap_max: Optional[int] = typer.Option(None, help="Widest layer [512]."),
    latent_size: Optional[int] = typer.Option(None, help="Length of z [512]."),
    minibatch: Optional[str] = typer.Option(None, help="Global minibatch: N for every resolution, or RES:N pairs "
                                            "(4:128,...,128:16 by default)."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate at every resolution [0.001; 0.0015 at 1024]."),
    ema_kimg: Optional[float] = typer.Option(None, help="Half-life of G_ema in thousands of images [10]."),
    ema_rampup: Optional[float] = typer.Option(None, help="G_ema's half-life at most this fraction of the images "
                                               "shown so far; 0: no ramp-up [0.05]."),
    ema_decay: Optional[float] = typer.Option(None, help="The paper's fixed G_ema decay per step instead (0.999); "
                                              "replaces --ema-kimg and --ema-rampup."),
    mirror: Optional[bool] = typer.Option(None, "--mirror/--no-mirror", help="Random horizontal flips [on]."),
    seed: Optional[int] = typer.Option(None, help="Seed of weights, latents and data order [0]."),
    workers: Optional[int] = typer.Option(None, help="DataLoader worker processes [2]."),
    threads: Threads = None,
    metrics: Optional[str] = typer.Option(None, help="Metrics at snapshot ticks, e.g. fid10k,swd."),
    tick_kimg: Optional[float] = typer.Option(None, help="Thousands of images per tick (log line, samples) [20]."),
    snapshot_ticks: Optional[int] = typer.Option(None, help="Ticks between checkpoints [10]."),
    metrics_ticks: Optional[int] = typer.Option(None, help="Ticks between metric evaluations [10]."),
    keep: Optional[int] = typer.Option(None, help="Checkpoints to keep, newest first [5]."),
    grid: Optional[str] = typer.Option(None, help="Sample grid as COLSxROWS [fits 1920x1080 at the target]."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write each tick's log line as TensorBoard "
                                     "scalars in the run folder (the optional 'tensorboard' extra)."),
) -> None:
    """Train a progressive GAN from 4x4 to --target; SIGINT/SIGTERM write a checkpoint, then exit (130/143);
    SIGUSR1 writes one and goes on."""
    from rich.markup import escape

    from progan_cli.checkpoints import load_checkpoint
    from progan_cli.devices import use_threads
    from progan_cli.config import TrainConfig, parse_minibatch, resumed_config
    from progan_cli.data.dataset import find_pyramid
    from progan_cli.errors import UsageError
    from progan_cli.training.distributed import check_batch_split, init_distributed
    from progan_cli.training.loop import check_data, check_resumed_data, training_loop
    from progan_cli.training.signals import SignalRequests

    options: dict[str, Any] = {
        "target": target, "device": device, "precision": precision, "loss": loss, "stable_kimg": stable_kimg,
        "fade_kimg": fade_kimg, "total_kimg": total_kimg, "fmap_base": fmap_base, "fmap_max": fmap_max,
        "latent_size": latent_size, "lr": lr, "mirror": mirror, "seed": seed, "workers": workers,
        "tick_kimg": tick_kimg, "snapshot_ticks": snapshot_ticks, "metrics_ticks": metrics_ticks,
        "keep_checkpoints": keep,
    }
    if lr is not None:
        options["lr_overrides"] = {}  # one rate everywhere, 1024x1024 included
    if minibatch is not None:
        options["minibatch"] = parse_minibatch(minibatch)
    if metrics is not None:
        options["metrics"] = tuple(m.strip() for m in metrics.split(",") if m.strip())
    if grid is not None:
        options["grid"] = parse_grid(grid)
    if data is not None:
        options["data"] = str(data.resolve())
    options = {k: v for k, v in options.items() if v is not None}
    if ema_kimg is not None:
        options["ema_kimg"] = ema_kimg
    if ema_rampup is not None:
        options["ema_rampup"] = ema_rampup or None
    if ema_decay is not None:
        if ema_kimg is not None or ema_rampup is not None:
            raise UsageError("--ema-decay (per step, the paper's) replaces --ema-kimg and --ema-rampup; give one")
        options.update(ema_decay=ema_decay, ema_kimg=None, ema_rampup=None)

    checkpoint = None
    if resume is not None:
        if out is not None:
            raise UsageError("--out and --resume exclude each other: a resumed run stays in its folder")
        checkpoint = load_checkpoint(resume)
        run_dir = Path(checkpoint["path"]).parent.parent
        cfg = resumed_config(TrainConfig.from_dict(checkpoint["config"]), options)
        done_kimg = checkpoint["progress"]["cur_nimg"] / 1000
        if done_kimg >= cfg.end_kimg:
            raise UsageError(f"{run_dir} has already trained {done_kimg:g} kimg of {cfg.end_kimg:g}; "
                             "pass a larger --total-kimg to go on")
    else:
        if data is None:
            options["data"] = str(find_pyramid(Path.cwd()).resolve())
            err_console.print(f"training on {options['data']}", soft_wrap=True)
        cfg = TrainConfig(**options)
        run_dir = out if out is not None else _next_run_dir(Path(options["data"]).stem, cfg.target)
        if int(os.environ.get("RANK", "0")) == 0 and run_dir.exists() and (not run_dir.is_dir()
                                                                          or any(run_dir.iterdir())):
            raise UsageError(f"{run_dir} already holds files; continue it with --resume {run_dir} or pick "
                             "another --out")
    if tensorboard:
        from progan_cli.tensorboard_log import check_tensorboard

        check_tensorboard()
    data_key = check_data(cfg)
    warning = (check_resumed_data(checkpoint.get("data"), data_key, data is not None, run_dir)
               if checkpoint is not None else None)
    if warning and int(os.environ.get("RANK", "0")) == 0:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    check_batch_split(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # torchrun's; before joining the group
    dist, note = init_distributed(cfg.device)
    board = None
    try:
        threads = use_threads(threads, reserved=cfg.workers)
        if note and dist.is_main:
            err_console.print(note)
        callback = None
        if cfg.metrics and dist.is_main:
            from progan_cli.metrics.in_training import make_training_metrics

            callback = make_training_metrics(list(cfg.metrics), Path(cfg.data), cfg.target, dist.device,
                                             seed=cfg.seed)
        if dist.is_main:
            err_console.print(f"run folder {run_dir}; {dist.world} process(es) on {dist.device}, {threads} CPU "
                              f"thread(s) each beside {cfg.workers} DataLoader worker(s) (--threads to change); "
                              f"{cfg.end_kimg:g} kimg to {cfg.target}x{cfg.target}", soft_wrap=True)
        if tensorboard and dist.is_main:
            from progan_cli.tensorboard_log import TensorBoardLog

            board = TensorBoardLog(run_dir, checkpoint["progress"]["cur_nimg"] if checkpoint else None)
        notify = err_console.print if dist.is_main else lambda text: None
        with SignalRequests(notify) as signals, _LiveDisplay(enabled=dist.is_main) as display:

            def on_progress(p, line: dict | None) -> None:  # rank 0 only; `line` when a tick has just ended
                display.update(p, line)
                if board is not None and line is not None:
                    board(line)

            state = training_loop(cfg, run_dir, resume=checkpoint, dist=dist, metrics=callback,
                                  stop=signals.stop_requested, checkpoint_now=signals.checkpoint_requested,
                                  on_progress=on_progress)
    finally:
        if board is not None:
            board.close()
        dist.close()
    if dist.is_main:
        if state.stopped:
            err_console.print(f"stopped at kimg {state.cur_nimg / 1000:.3f} with a checkpoint; continue with "
                              f"`progan train --resume {run_dir}`", soft_wrap=True)
        print(run_dir)
    if state.stopped:
        # A rank that another rank's signal stopped (it got none itself) still ends as stopped by SIGTERM.
        raise typer.Exit(signals.exit_code or 128 + signal.SIGTERM)


def _next_run_dir(stem: str, target: int) -> Path:
    """runs/00000-<stem>-<target>, numbered one above the highest run already there (as the official code)."""
    numbers = [int(p.name[:5]) for p in RUNS_DIR.glob("[0-9][0-9][0-9][0-9][0-9]-*")] if RUNS_DIR.is_dir() else []
    return RUNS_DIR / f"{max(numbers, default=-1) + 1:05d}-{stem}-{target}"


class _LiveDisplay:
    """A rich live line on stderr (resolution, phase, alpha, kimg, images/s, losses, ETA) and one printed line
    per finished tick."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._live = None

    def __enter__(self) -> _LiveDisplay:
        if self.enabled:
            from rich.live import Live

            self._live = Live("starting...", console=err_console, refresh_per_second=2, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, p, line: dict | None) -> None:
        if self._live is None:
            return
        losses = "  ".join(f"{k} {v:.3g}" for k, v in p.losses.items() if k.startswith("loss_"))
        alpha = f" alpha {p.alpha:.3f}" if p.phase == "fade" else ""
        text = (f"{p.res}x{p.res} {p.phase}{alpha}  kimg {p.kimg:.1f}/{p.end_kimg:g}  {p.img_per_s:.1f} img/s  "
                f"{losses}  ETA {_duration(p.eta_s)}")
        if line is not None:
            self._live.console.print(f"tick {line['tick']}: {text}", soft_wrap=True)
        self._live.update(text)


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "--:--:--"  # nothing measured yet
    seconds = int(min(max(seconds, 0), 99 * 86400))
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}d {h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def register(app: typer.Typer) -> None:
    app.command()(train)
