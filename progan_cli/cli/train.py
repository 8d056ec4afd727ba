"""`progan train [DATA.h5] --target 128`: progressive growing on a pyramid; `--resume RUN` continues a run.

Options left out keep the config defaults on a new run and the run's own values on a resumed one, so every
option here defaults to None and only what the user typed reaches the config.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Optional

import typer

from progan_cli.cli.common import Threads, err_console, parse_grid
from progan_cli.config import DEFAULT_LR, DEFAULT_MINIBATCH, LOSS_NAMES, TrainConfig
from progan_cli.devices import DEVICE_HELP

def _d(name: str) -> str:
    """A TrainConfig default as help text shows it: defaults are written once, in the config."""
    value = _DEFAULTS[name]
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
_LR_AT = ", ".join(f"{lr:g} at {res}" for res, lr in DEFAULT_LR.items())
_MINIBATCH = ",".join(f"{res}:{n}" for res, n in DEFAULT_MINIBATCH.items())


def train(
    data: Optional[Path] = typer.Argument(None, help="Pyramid file from `progan prep` [default: the one *.h5 "
                                          "in the working directory]."),
    target: Optional[int] = typer.Option(None, help=f"Final resolution, a power of two [{_d('target')}]."),
    resume: Optional[Path] = typer.Option(None, help="Run folder (or checkpoint file) to continue exactly."),
    init: Optional[Path] = typer.Option(None, help="Fine-tune a grown network: a run, checkpoint, export, official "
                                        "NVIDIA pickle or pytorch_GAN_zoo checkpoint. The new run takes its G, D and "
                                        "G_ema and its shape, and starts at its resolution in the stable phase (kimg "
                                        "counts on from where the schedule reaches it), Adam fresh."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder [default: runs/NNNNN-<data>-<target>]."),
    device: Optional[str] = typer.Option(None, help=f"{DEVICE_HELP} [{_d('device')}]."),
    precision: Optional[str] = typer.Option(None, help="fp32 (true fp32), tf32 (TF32 matmuls/convs on CUDA) or "
                                            f"bf16 (autocast; penalty in fp32) [{_d('precision')}]."),
    loss: Optional[str] = typer.Option(None, help=f"{', '.join(LOSS_NAMES)} [{_d('loss')}, the paper's]."),
    stable_kimg: Optional[float] = typer.Option(None, help=f"Thousands of images per stable phase "
                                                f"[{_d('stable_kimg')}]."),
    fade_kimg: Optional[float] = typer.Option(None, help=f"Thousands of images per fade-in [{_d('fade_kimg')}]."),
    total_kimg: Optional[float] = typer.Option(None, help="Stop after this many thousand images "
                                               "[default: reach the target, then one stable phase]."),
    fmap_base: Optional[int] = typer.Option(None, help="Network width: nf(stage) = min(base / 2^stage, max) "
                                            f"[{_d('fmap_base')}]."),
    fmap_max: Optional[int] = typer.Option(None, help=f"Widest layer [{_d('fmap_max')}]."),
    latent_size: Optional[int] = typer.Option(None, help=f"Length of z [{_d('latent_size')}]."),
    minibatch: Optional[str] = typer.Option(None, help="Global minibatch: N for every resolution, or RES:N pairs "
                                            f"[{_MINIBATCH}]."),
    lr: Optional[float] = typer.Option(None, help=f"Adam learning rate at every resolution [{_d('lr')}; {_LR_AT}]."),
    ema_kimg: Optional[float] = typer.Option(None, help=f"Half-life of G_ema in thousands of images "
                                             f"[{_d('ema_kimg')}]."),
    ema_rampup: Optional[float] = typer.Option(None, help="G_ema's half-life at most this fraction of the images "
                                               f"shown so far; 0: no ramp-up [{_d('ema_rampup')}]."),
    ema_decay: Optional[float] = typer.Option(None, help="The paper's fixed G_ema decay per step instead (0.999); "
                                              "replaces --ema-kimg and --ema-rampup."),
    mirror: Optional[bool] = typer.Option(None, "--mirror/--no-mirror",
                                          help=f"Random horizontal flips [{_d('mirror')}]."),
    seed: Optional[int] = typer.Option(None, help=f"Seed of weights, latents and data order [{_d('seed')}]."),
    workers: Optional[int] = typer.Option(None, help=f"DataLoader worker processes [{_d('workers')}]."),
    threads: Threads = None,
    metrics: Optional[str] = typer.Option(None, help="Metrics at snapshot ticks, e.g. fid10k,swd."),
    tick_kimg: Optional[float] = typer.Option(None, help="Thousands of images per tick (log line, samples) "
                                              f"[{_d('tick_kimg')}]."),
    snapshot_ticks: Optional[int] = typer.Option(None, help=f"Ticks between checkpoints [{_d('snapshot_ticks')}]."),
    metrics_ticks: Optional[int] = typer.Option(None, help="Ticks between metric evaluations "
                                                f"[{_d('metrics_ticks')}]."),
    keep: Optional[int] = typer.Option(None, help=f"Checkpoints to keep, newest first [{_d('keep_checkpoints')}]."),
    grid: Optional[str] = typer.Option(None, help="Sample grid as COLSxROWS [fits 1920x1080 at the target]."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write each tick's log line as TensorBoard "
                                     "scalars in the run folder (the optional 'tensorboard' extra)."),
) -> None:
    """Train a progressive GAN from 4x4 to --target; SIGINT/SIGTERM write a checkpoint, then exit (130/143);
    SIGUSR1 writes one and goes on."""
    from rich.markup import escape

    from progan_cli.config import parse_minibatch
    from progan_cli.errors import UsageError
    from progan_cli.training.launch import train as run_training

    options: dict[str, Any] = {
        "target": target, "device": device, "precision": precision, "loss": loss, "stable_kimg": stable_kimg,
        "fade_kimg": fade_kimg, "total_kimg": total_kimg, "fmap_base": fmap_base, "fmap_max": fmap_max,
        "latent_size": latent_size, "lr": lr, "mirror": mirror, "seed": seed, "workers": workers,
        "tick_kimg": tick_kimg, "snapshot_ticks": snapshot_ticks, "metrics_ticks": metrics_ticks,
        "keep_checkpoints": keep,
        "lr_overrides": {} if lr is not None else None,  # one rate everywhere, 1024x1024 included
        "minibatch": parse_minibatch(minibatch) if minibatch is not None else None,
        "metrics": tuple(m.strip() for m in metrics.split(",") if m.strip()) if metrics is not None else None,
        "grid": parse_grid(grid) if grid is not None else None,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if ema_kimg is not None:
        options["ema_kimg"] = ema_kimg
    if ema_rampup is not None:
        options["ema_rampup"] = ema_rampup or None
    if ema_decay is not None:
        if ema_kimg is not None or ema_rampup is not None:
            raise UsageError("--ema-decay (per step, the paper's) replaces --ema-kimg and --ema-rampup; give one")
        options.update(ema_decay=ema_decay, ema_kimg=None, ema_rampup=None)

    def say(text: str) -> None:
        err_console.print(escape(text), soft_wrap=True)

    def warn(text: str) -> None:
        err_console.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)

    def scores(cfg, device):  # the metrics package loads only for a run that asks for metrics
        from progan_cli.metrics.in_training import run_metrics

        return run_metrics(cfg, device)

    board = None
    if tensorboard:
        from progan_cli.tensorboard_log import TensorBoardLog, check_tensorboard

        check_tensorboard()
        board = TensorBoardLog
    with _LiveDisplay(enabled=int(os.environ.get("RANK", "0")) == 0) as display:
        outcome = run_training(options, data=data, resume=resume, init=init, out=out, threads=threads, say=say,
                               warn=warn, on_progress=display.update, metrics=scores, log_sink=board)
    if outcome.is_main:
        if outcome.stopped:
            say(f"stopped at kimg {outcome.cur_nimg / 1000:.3f} with a checkpoint; continue with "
                f"`progan train --resume {outcome.run_dir}`")
        print(outcome.run_dir)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


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
