"""The live display's ETA: images left per resolution from the schedule, each at its own rate, never negative."""

from __future__ import annotations

import math

import pytest

from progan_cli.cli.train import _duration
from progan_cli.config import TrainConfig
from progan_cli.schedule import eta_seconds, nimg_per_resolution, schedule_at

# Widths nf = min(128 / 2^stage, 64): 64 at 4x4, 32 at 8x8, 16 at 16x16. Phases of 1 + 1 kimg; the end at
# 5 kimg: 4x4 for 0-1, 8x8 (fade, then stable) for 1-3, 16x16 for 3-5.
CFG = TrainConfig(data="x.h5", target=16, stable_kimg=1, fade_kimg=1, total_kimg=5, fmap_base=128, fmap_max=64)


def test_images_per_resolution_follow_the_schedule():
    assert nimg_per_resolution(CFG, 0, 5000) == {4: 1000, 8: 2000, 16: 2000}
    assert nimg_per_resolution(CFG, 500, 5000) == {4: 500, 8: 2000, 16: 2000}
    assert nimg_per_resolution(CFG, 2500, 4000) == {8: 500, 16: 1000}
    assert nimg_per_resolution(CFG, 5000, 5000) == {}
    # Each image counted where schedule_at trains it (a fade belongs to the new resolution).
    counted = {}
    for nimg in range(0, 5000, 10):
        res = schedule_at(nimg + 1, CFG).res  # the schedule just after nimg images
        counted[res] = counted.get(res, 0) + 10
    assert counted == nimg_per_resolution(CFG, 0, 5000)


def test_unmeasured_resolutions_are_scaled_by_the_work_per_image():
    # Work per image, sum over blocks of res^2 * nf^2: 4x4 16 * 64^2 = 65536; 8x8 adds 64 * 32^2 = 65536;
    # 16x16 adds 256 * 16^2 = 65536. So 8x8 runs at 1/2 and 16x16 at 1/3 of the 4x4 rate.
    # 500 left at 4x4 at 100 img/s: 5 s; 2000 at 8x8 at 50: 40 s; 2000 at 16x16 at 33.3: 60 s.
    assert eta_seconds(CFG, 500, {4: 100.0}) == pytest.approx(105.0)
    # Dividing the 4500 images left by the 4x4 rate alone would have said 45 s (the 4x low first tick).
    # Measured rates win; the nearest measured resolution (the higher on a tie) is scaled for the others.
    assert eta_seconds(CFG, 1500, {4: 100.0, 8: 80.0}) == pytest.approx(1500 / 80 + 2000 / (80 * 2 / 3))
    assert eta_seconds(CFG, 3500, {4: 100.0, 8: 80.0, 16: 10.0}) == pytest.approx(150.0)


def test_eta_is_zero_at_and_past_the_end_and_unknown_without_a_rate():
    assert eta_seconds(CFG, 5000, {16: 10.0}) == 0.0
    assert eta_seconds(CFG, 5120, {16: 10.0}) == 0.0  # the last update overshoots the end: not negative
    assert math.isinf(eta_seconds(CFG, 0, {}))


@pytest.mark.parametrize("seconds, text", [(0, "00:00:00"), (-3, "00:00:00"), (3661, "01:01:01"),
                                           (90000, "1d 01:00:00"), (1e12, "99d 00:00:00"),
                                           (math.inf, "--:--:--")])
def test_duration_text(seconds, text):
    assert _duration(seconds) == text
