"""Metrics during training (`progan train --metrics fid10k,swd`): a callback the training loop calls at
snapshot ticks with the EMA generator. Training never imports metrics; the CLI builds this callback.

Names: `fid<N>k` (N thousand generated images against the whole real level, TTUR protocol), `is<N>k`
(needs the classifier weights), `swd` or `swd<N>k` (N thousand images of each set, 16k by default as in the
paper, capped at the level's size; skipped below 16x16). The real side is computed once per resolution: FID
statistics through the same disk cache as `progan fid`, SWD descriptors of the current resolution kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from progan_cli.errors import UsageError

SWD_DEFAULT_N = 16384
_NAME = re.compile(r"^(fid|is|swd)(\d+)?(k?)$")


def parse_metric(name: str) -> tuple[str, int | None]:
    """'fid10k' -> ('fid', 10000), 'swd' -> ('swd', None); UsageError for anything else."""
    match = _NAME.match(name.strip().lower())
    if not match or (match.group(1) != "swd" and not match.group(2)):
        raise UsageError(f"--metrics: unknown metric {name!r}; use fid<N>k, is<N>k, swd or swd<N>k "
                         "(e.g. fid10k,swd)")
    kind, number, kilo = match.groups()
    return kind, None if number is None else int(number) * (1000 if kilo else 1)


def make_training_metrics(names: list[str], data: Path, res: int, device: torch.device | str,
                          seed: int = 0) -> Callable[[torch.nn.Module, int], dict[str, float]]:
    """The callback (G_ema, res) -> {name: value}. `data` is the pyramid file (or the folder holding it);
    `res` is the target resolution, checked against the pyramid now so a bad option fails before training."""
    from progan_cli.data.dataset import find_pyramid
    from progan_cli.metrics.features import Extractor
    from progan_cli.metrics.fid import frechet_distance, source_stats, statistics
    from progan_cli.metrics.inception_score import inception_score
    from progan_cli.metrics.sources import GeneratorSource, PyramidSource
    from progan_cli.metrics.swd import SWDSampler, SetDescriptors, describe, swd_batch_size, swd_distance

    metrics = [(name, *parse_metric(name)) for name in names]
    pyramid = Path(data) if Path(data).is_file() else find_pyramid(Path(data))
    PyramidSource(pyramid, res)  # fails now (DataError) if the level is missing
    needs_inception = any(kind in ("fid", "is") for _, kind, _ in metrics)
    extractor = (Extractor(None, "ttur", device, need_classifier=any(k == "is" for _, k, _ in metrics))
                 if needs_inception else None)
    real_stats: dict[int, object] = {}
    real_desc: dict[tuple[int, int], SetDescriptors] = {}  # the reals' SWD descriptors at one (res, n)

    def callback(G_ema: torch.nn.Module, cur_res: int) -> dict[str, float]:
        out: dict[str, float] = {}
        reals = PyramidSource(pyramid, cur_res)
        for name, kind, n in metrics:
            if kind == "fid":
                if cur_res not in real_stats:
                    real_stats[cur_res] = source_stats(reals, extractor)[0]
                ref = real_stats[cur_res]
                fake = GeneratorSource(G_ema, cur_res, n, device, seed, "G_ema")
                mu, sigma = statistics(extractor.run(fake)[0])
                out[name] = frechet_distance(mu, sigma, ref.mu, ref.sigma)
            elif kind == "is":
                fake = GeneratorSource(G_ema, cur_res, n, device, seed, "G_ema")
                out[name], out[f"{name}_std"] = inception_score(extractor.run(fake, logits=True)[1])
            elif cur_res >= 16:  # SWD's Laplacian pyramid starts at 16x16; nothing to compare below
                count = min(n or SWD_DEFAULT_N, reals.count)
                batch, sampler = swd_batch_size(cur_res), SWDSampler(seed)
                if (cur_res, count) not in real_desc:
                    for old in [key for key in real_desc if key[0] != cur_res]:  # resolutions only grow
                        del real_desc[old]
                    real_desc[(cur_res, count)] = describe(reals.batches(batch), count, 0, sampler, device)
                fake = GeneratorSource(G_ema, cur_res, count, device, seed, "G_ema")
                result = swd_distance(real_desc[(cur_res, count)], describe(fake.batches(batch), count, 1, sampler,
                                                                             device))
                out[name] = result["mean"]
                out.update({f"{name}/{lvl}": v for lvl, v in result["levels"].items()})
        return out

    return callback
