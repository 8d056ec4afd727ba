"""The progressive-growing schedule: a pure function of the number of real images shown (paper section 2).

Follows the official `TrainingSchedule` (tkarras/progressive_growing_of_gans, train.py):
    kimg = cur_nimg / 1000;  phase = floor(kimg / (stable + fade));  t = kimg - phase * (stable + fade)
    lod = log2(target) - 2 - phase - max(t - stable, 0) / fade, clipped at 0
The level of detail `lod` counts halvings below the target: during a fade it falls from k+1 to k while the
layers of resolution target / 2^k blend in with weight alpha = 1 - frac(lod). From the first image of a
fade the new resolution already sets the minibatch, the learning rate and the pyramid level read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from progan_cli.config import TrainConfig


@dataclass(frozen=True)
class Schedule:
    """Where training stands after `cur_nimg` real images."""

    kimg: float
    lod: float
    res: int  # resolution G outputs and D reads: target / 2^floor(lod)
    alpha: float  # weight of the newest layers; 1 in a stable phase
    minibatch: int  # global, all ranks together
    lr: float
    phase: str  # "stable" or "fade"

    @property
    def sampling_res(self) -> int:
        """The highest resolution G renders with its layers fully in: the previous one during a fade."""
        return self.res if self.alpha == 1.0 else self.res // 2


def schedule_at(cur_nimg: int, cfg: TrainConfig) -> Schedule:
    """The schedule after `cur_nimg` real images (official TrainingSchedule)."""
    kimg = cur_nimg / 1000.0
    phase_kimg = cfg.stable_kimg + cfg.fade_kimg
    phase_idx = math.floor(kimg / phase_kimg)
    t = kimg - phase_idx * phase_kimg
    lod = math.log2(cfg.target) - 2 - phase_idx - max(t - cfg.stable_kimg, 0.0) / cfg.fade_kimg
    lod = max(lod, 0.0)
    res, alpha = level_of_detail(cfg.target, lod)
    return Schedule(kimg=kimg, lod=lod, res=res, alpha=alpha, minibatch=cfg.minibatch_at(res), lr=cfg.lr_at(res),
                    phase="stable" if alpha == 1.0 else "fade")


def start_nimg(cfg: TrainConfig) -> int:
    """Real images shown when the run starts: 0, or for a run fine-tuning a grown network (`progan train
    --init`, `cfg.init` set) where its schedule reaches the target fully faded in (its last stable phase)."""
    if cfg.init is None:
        return 0
    return round((len(cfg.resolutions) - 1) * (cfg.stable_kimg + cfg.fade_kimg) * 1000)


def level_of_detail(target: int, lod: float) -> tuple[int, float]:
    """(res, alpha) at `lod` halvings below `target`: the resolution G works at, target / 2^floor(lod), and the
    weight 1 - frac(lod) of its newest layers (the official lod_in of a network, as our schedule uses it)."""
    return target >> math.floor(lod), 1.0 - (lod - math.floor(lod))


@dataclass(frozen=True)
class PhaseSpan:
    """One phase of the schedule: `res` trained alone ("stable") or fading in ("fade"), over [start, end) kimg."""

    res: int
    phase: str
    start_kimg: float
    end_kimg: float


def phase_spans(cfg: TrainConfig) -> list[PhaseSpan]:
    """The schedule's phases in order, from the run's start (`start_nimg`) up to cfg.end_kimg: resolution k
    (4 * 2^k) fades in over [(k-1) P + stable, k P) and trains alone over [k P, k P + stable), P = stable +
    fade; the target trains on until the end. Plots shade these; `schedule_at` gives the same answer at every
    point inside them."""
    period = cfg.stable_kimg + cfg.fade_kimg
    spans = []
    for k, res in enumerate(cfg.resolutions):
        if k > 0:
            spans.append(PhaseSpan(res, "fade", (k - 1) * period + cfg.stable_kimg, k * period))
        end = cfg.end_kimg if res == cfg.target else k * period + cfg.stable_kimg
        spans.append(PhaseSpan(res, "stable", k * period, end))
    first = start_nimg(cfg) / 1000
    return [PhaseSpan(s.res, s.phase, max(s.start_kimg, first), min(s.end_kimg, cfg.end_kimg))
            for s in spans if s.start_kimg < cfg.end_kimg and s.end_kimg > first]


def adam_reset_needed(prev_lod: float, lod: float) -> bool:
    """Official `reset_opt_for_new_lod`: Adam starts afresh when floor(lod) or ceil(lod) changes.

    That happens when a fade starts (floor drops: lod leaves a whole number, new layers appear) and when it
    ends (ceil drops: lod reaches the next whole number).
    """
    return math.floor(prev_lod) != math.floor(lod) or math.ceil(prev_lod) != math.ceil(lod)


def nimg_per_resolution(cfg: TrainConfig, start_nimg: int, end_nimg: int) -> dict[int, int]:
    """Real images each resolution trains on between two points of the run, lowest resolution first.

    A fade counts for the new resolution (it sets the minibatch and runs the new layers): resolution
    4 * 2^k trains from `stable + (k-1) * (stable + fade)` kimg (its fade-in) to `stable + k * (stable + fade)`,
    the target from its fade-in to the end.
    """
    period, out = cfg.stable_kimg + cfg.fade_kimg, {}
    for k, res in enumerate(cfg.resolutions):
        lo = 0 if k == 0 else round((cfg.stable_kimg + (k - 1) * period) * 1000)
        hi = round((cfg.stable_kimg + k * period) * 1000) if res < cfg.target else end_nimg
        n = min(hi, end_nimg) - max(lo, start_nimg)
        if n > 0:
            out[res] = n
    return out


def eta_seconds(cfg: TrainConfig, cur_nimg: int, rates: dict[int, float]) -> float:
    """Seconds until cfg.end_kimg: each resolution's remaining images at its own measured rate (images/s).

    A resolution not measured yet takes the rate of the nearest measured one, scaled by the work per image:
    sum over the blocks up to it of res^2 * nf^2, the 3x3 convolutions that dominate G and D alike. (The
    rate at 4x4 says little about 128x128: dividing the images left by it put the first ETA of a run 4x too
    low.) 0 at or past the end, inf with nothing measured.
    """
    from progan_cli.networks.layers import block_widths

    def work(res: int) -> float:
        return sum(r * r * w * w for r, w in zip(cfg.resolutions, block_widths(res, cfg.fmap_base, cfg.fmap_max)))

    remaining = nimg_per_resolution(cfg, cur_nimg, round(cfg.end_kimg * 1000))
    measured = {res: rate for res, rate in rates.items() if rate > 0}
    if not remaining:
        return 0.0
    if not measured:
        return math.inf
    seconds = 0.0
    for res, n in remaining.items():
        ref = min(measured, key=lambda m: (abs(math.log2(m / res)), -m))  # nearest; the higher one on a tie
        seconds += n / (measured[ref] * work(ref) / work(res))
    return seconds
