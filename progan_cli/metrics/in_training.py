"""Metrics during training (`progan train --metrics fid10k,swd`): a callback the training loop calls at
snapshot ticks with the EMA generator. Training never imports metrics; the CLI builds this callback.

The names and the scoring are those of `progan eval` (progan_cli.metrics.evaluate): `fid<N>`, `kid<N>`, `pr<N>`,
`is<N>` (needs the classifier weights: training stops before it starts without them), `swd[<N>]`,
`msssim[<N>]`; the log gets the values under the same names (fid10k; kid10k and kid10k_std; pr10k_precision and
pr10k_recall; swd and swd/16, ...). The real side is computed once per resolution and cached on disk; SWD and
MS-SSIM are left out below 16x16.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def make_training_metrics(names: list[str], data: Path, res: int, device: torch.device | str,
                          seed: int = 0) -> Callable[[torch.nn.Module, int], dict[str, float]]:
    """The callback (G_ema, res) -> {name: value}. `data` is the pyramid file (or the folder holding it);
    `res` is the target resolution, checked against the pyramid now so a bad option fails before training."""
    from progan_cli.data.dataset import find_pyramid
    from progan_cli.metrics.evaluate import Evaluator, parse_metrics
    from progan_cli.metrics.sources import PyramidSource

    specs = parse_metrics(names)
    pyramid = Path(data) if Path(data).is_file() else find_pyramid(Path(data))
    PyramidSource(pyramid, res)  # fails now (DataError) if the level is missing
    evaluator = Evaluator(specs, pyramid, device, seed)

    def callback(G_ema: torch.nn.Module, cur_res: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for result in evaluator.evaluate(G_ema, cur_res)[0]:
            out.update(result.results)
        return out

    return callback


def run_metrics(cfg, device: torch.device | str) -> Callable[[torch.nn.Module, int], dict[str, float]]:
    """The callback for a run's own `--metrics` (a TrainConfig's metrics, data, target and seed)."""
    return make_training_metrics(list(cfg.metrics), Path(cfg.data), cfg.target, device, seed=cfg.seed)
