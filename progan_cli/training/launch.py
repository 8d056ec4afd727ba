"""What `progan train` does around the loop: a new run or a resumed one, checked before any work, then one
process's share of it (torchrun's ranks each run this), with signals, metrics and TensorBoard wired in.

Options the user left out keep the config defaults on a new run and the run's own values on a resumed one,
so `options` holds only what was typed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from progan_cli.checkpoints import load_checkpoint
from progan_cli.config import ARCHITECTURE, TrainConfig, resumed_config
from progan_cli.data.dataset import find_pyramid
from progan_cli.data.stream import check_data, check_resumed_data
from progan_cli.devices import use_threads
from progan_cli.errors import UsageError
from progan_cli.formats import Networks, load_networks
from progan_cli.schedule import start_nimg
from progan_cli.training.distributed import check_batch_split, init_distributed
from progan_cli.training.loop import Progress, training_loop
from progan_cli.training.signals import SignalRequests

RUNS_DIR = Path("runs")


class LogSink(Protocol):
    """A consumer of the log line of each finished tick, closed when the session ends."""

    def __call__(self, line: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class Outcome:
    """How this process's share of the run ended."""

    run_dir: Path
    is_main: bool  # rank 0 (or the only process): the one that reports
    cur_nimg: int
    stopped: bool  # a signal stopped it, with a checkpoint
    exit_code: int  # 0, or 128 + the signal that stopped the run (143 when another rank's did)


def train(options: dict[str, Any], *, data: Path | None = None, resume: Path | None = None,
          init: Path | None = None, out: Path | None = None, threads: int | None = None,
          say: Callable[[str], None] = lambda text: None, warn: Callable[[str], None] = lambda text: None,
          on_progress: Callable[[Progress, dict[str, Any] | None], None] | None = None,
          metrics: Callable[[TrainConfig, torch.device], Callable[[nn.Module, int], dict[str, float]]] | None = None,
          log_sink: Callable[[Path, int | None], LogSink] | None = None) -> Outcome:
    """Start (or with `resume`, continue; with `init`, fine-tune the networks of that file) a run and train this
    process's share of it until it ends or a signal stops it. `say`/`warn` get one-line messages on rank 0
    only; `on_progress` is the loop's hook.
    The caller brings what consumes the run (training depends on neither): `metrics(cfg, device)` makes the
    callback that scores G_ema when the run asks for metrics; `log_sink(run_dir, resumed_nimg)` opens on
    rank 0 a consumer of each tick's log line (TensorBoard)."""
    rank0 = int(os.environ.get("RANK", "0")) == 0
    cfg, run_dir, checkpoint, pretrained = _plan(options, data, resume, init, out, rank0,
                                                 say if rank0 else lambda text: None)
    data_key = check_data(cfg)
    if checkpoint is not None:
        warning = check_resumed_data(checkpoint.get("data"), data_key, data is not None, run_dir)
        if warning and rank0:
            warn(warning)
    check_batch_split(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # torchrun's; before joining the group
    dist, note = init_distributed(cfg.device)
    board = None
    try:
        threads = use_threads(threads, reserved=cfg.workers)
        if not dist.is_main:
            say = warn = lambda text: None
        if note:
            say(note)
        callback = metrics(cfg, dist.device) if cfg.metrics and dist.is_main and metrics is not None else None
        say(f"run folder {run_dir}; {dist.world} process(es) on {dist.device}, {threads} CPU thread(s) each "
            f"beside {cfg.workers} DataLoader worker(s) (--threads to change); {cfg.end_kimg:g} kimg to "
            f"{cfg.target}x{cfg.target}")
        if log_sink is not None and dist.is_main:
            board = log_sink(run_dir, checkpoint["progress"]["cur_nimg"] if checkpoint else None)

        def hook(p: Progress, line: dict[str, Any] | None) -> None:  # rank 0 only; `line` when a tick ended
            if on_progress is not None:
                on_progress(p, line)
            if board is not None and line is not None:
                board(line)

        with SignalRequests(say) as signals:
            state = training_loop(cfg, run_dir, resume=checkpoint, init=pretrained, dist=dist, metrics=callback,
                                  stop=signals.stop_requested, checkpoint_now=signals.checkpoint_requested,
                                  on_progress=hook)
    finally:
        if board is not None:
            board.close()
        dist.close()
    # A rank that another rank's signal stopped (it got none itself) still ends as stopped by SIGTERM.
    code = (signals.exit_code or 128 + signal.SIGTERM) if state.stopped else 0
    return Outcome(run_dir=run_dir, is_main=dist.is_main, cur_nimg=state.cur_nimg, stopped=state.stopped,
                   exit_code=code)


def _plan(options: dict[str, Any], data: Path | None, resume: Path | None, init: Path | None, out: Path | None,
          rank0: bool, say: Callable[[str], None]) -> tuple[TrainConfig, Path, dict[str, Any] | None, Networks | None]:
    """The config, the run folder, (resuming) the checkpoint and (fine-tuning) the networks to start from; a
    UsageError for what cannot be done."""
    options = dict(options)
    if data is not None:
        options["data"] = str(Path(data).resolve())
    if resume is not None:
        if out is not None or init is not None:
            raise UsageError(f"--{'init' if init is not None else 'out'} and --resume exclude each other: a resumed "
                             "run stays in its folder and goes on from its own checkpoint")
        checkpoint = load_checkpoint(resume)
        run_dir = Path(checkpoint["path"]).parent.parent
        cfg = resumed_config(TrainConfig.from_dict(checkpoint["config"]), options)
        done_kimg = checkpoint["progress"]["cur_nimg"] / 1000
        if done_kimg >= cfg.end_kimg:
            raise UsageError(f"{run_dir} has already trained {done_kimg:g} kimg of {cfg.end_kimg:g}; "
                             "pass a larger --total-kimg to go on")
        return cfg, run_dir, checkpoint, None
    if data is None:
        options["data"] = str(find_pyramid(Path.cwd()).resolve())
        say(f"training on {options['data']}")
    pretrained = None
    if init is not None:
        pretrained = load_networks(init)
        options = _fine_tuning_options(options, pretrained)
    cfg = TrainConfig(**options)
    if pretrained is not None:
        _check_fine_tuning(cfg, pretrained, say)
    run_dir = Path(out) if out is not None else next_run_dir(Path(options["data"]).stem, cfg.target)
    if rank0 and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UsageError(f"{run_dir} already holds files; continue it with --resume {run_dir} or pick another --out")
    return cfg, run_dir, None, pretrained


def _fine_tuning_options(options: dict[str, Any], pretrained: Networks) -> dict[str, Any]:
    """A new run's options when it starts from `pretrained`: the networks' shape is the file's."""
    if not pretrained.finished:
        raise UsageError(f"--init {pretrained.source}: it has grown to {pretrained.grown_to}x{pretrained.grown_to} "
                         f"at alpha {pretrained.alpha:.3f}, not fully to {pretrained.config.target}x"
                         f"{pretrained.config.target}; fine-tuning starts from a grown network (--resume its run "
                         "instead)")
    shape = {name: getattr(pretrained.config, name) for name in ARCHITECTURE}
    for name, value in shape.items():
        if name in options and options[name] != value:
            raise UsageError(f"--{name.replace('_', '-')} {options[name]}: --init {pretrained.source} has "
                             f"{name} {value}; leave it out (a fine-tuning run keeps the network's shape)")
    return {**options, **shape, "init": str(Path(pretrained.source).resolve())}


def _check_fine_tuning(cfg: TrainConfig, pretrained: Networks, say: Callable[[str], None]) -> None:
    """The pyramid must hold the network's resolution; the run must train past where it starts."""
    from progan_cli.data.pyramid import Pyramid

    with Pyramid(Path(cfg.data)) as pyr:
        if pyr.target < cfg.target:
            raise UsageError(f"--init {pretrained.source} is a {cfg.target}x{cfg.target} network, and {cfg.data} "
                             f"holds {pyr.target}x{pyr.target} images; prep the photos again with --target "
                             f"{cfg.target} to fine-tune it")
    start = start_nimg(cfg) / 1000
    if cfg.end_kimg <= start:
        raise UsageError(f"--total-kimg {cfg.end_kimg:g}: a fine-tuning run starts at kimg {start:g}, where its "
                         f"schedule reaches {cfg.target}x{cfg.target}; give a larger --total-kimg (the default "
                         f"trains one stable phase, {cfg.stable_kimg:g} kimg)")
    if "D" not in pretrained.weights:
        say(f"{pretrained.source} holds a generator only: D starts from random weights")
    say(f"fine-tuning {pretrained.kind} {pretrained.source} ({pretrained.origin}; licence "
        f"{pretrained.licence or 'not recorded'}) from kimg {start:g}")


def next_run_dir(stem: str, target: int) -> Path:
    """runs/00000-<stem>-<target>, numbered one above the highest run already there (as the official code)."""
    numbers = [int(p.name[:5]) for p in RUNS_DIR.glob("[0-9][0-9][0-9][0-9][0-9]-*")] if RUNS_DIR.is_dir() else []
    return RUNS_DIR / f"{max(numbers, default=-1) + 1:05d}-{stem}-{target}"
