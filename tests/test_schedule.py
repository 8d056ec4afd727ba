"""The progressive schedule against values worked out by hand from the official formula (train.py, `TrainingSchedule`).

For a 128x128 target, log2(128) - 2 = 5 and a phase is 600 + 600 kimg:
    lod = 5 - phase - max(t - 600, 0) / 600, phase = floor(kimg / 1200), t = kimg - 1200 * phase.
"""

from __future__ import annotations

import pytest

from progan_cli.config import DEFAULT_MINIBATCH, TrainConfig, parse_minibatch, resumed_config
from progan_cli.errors import UsageError
from progan_cli.schedule import adam_reset_needed, schedule_at

# kimg -> (lod, res, alpha, minibatch, phase), each computed by hand.
HAND_128 = {
    0: (5.0, 4, 1.0, 128, "stable"),
    599: (5.0, 4, 1.0, 128, "stable"),  # phase 0, t = 599 < 600
    900: (4.5, 8, 0.5, 128, "fade"),  # t = 900: lod = 5 - 300/600; 8x8 already reads its level
    1050: (4.25, 8, 0.75, 128, "fade"),  # t = 1050: 5 - 450/600
    1500: (4.0, 8, 1.0, 128, "stable"),  # phase 1, t = 300
    2100: (3.5, 16, 0.5, 128, "fade"),  # phase 1, t = 900: 5 - 1 - 0.5
    3000: (3.0, 16, 1.0, 128, "stable"),  # phase 2, t = 600: the fade has not started
    3720: (2.0, 32, 1.0, 64, "stable"),  # phase 3, t = 120
    4380: (1.7, 64, 0.3, 32, "fade"),  # phase 3, t = 780: 5 - 3 - 180/600
    5700: (0.5, 128, 0.5, 16, "fade"),  # phase 4, t = 900: 5 - 4 - 0.5
    6000: (0.0, 128, 1.0, 16, "stable"),  # phase 5, t = 0
    9000: (0.0, 128, 1.0, 16, "stable"),  # phase 7: 5 - 7 < 0, clipped
}


@pytest.mark.parametrize("kimg", sorted(HAND_128))
def test_schedule_for_128_target_matches_hand_values(kimg):
    lod, res, alpha, minibatch, phase = HAND_128[kimg]
    s = schedule_at(kimg * 1000, TrainConfig(data="x.h5", target=128))
    assert s.lod == pytest.approx(lod, abs=1e-12)
    assert (s.res, s.minibatch, s.phase) == (res, minibatch, phase)
    assert s.alpha == pytest.approx(alpha, abs=1e-12)
    assert s.lr == 0.001


def test_lr_is_0_0015_only_at_1024():
    cfg = TrainConfig(data="x.h5", target=1024)
    # 1024 fades in during phase 7 (lod 8 - 7 - ...); at kimg 9000: phase 7, t = 600 -> lod 1.0 (512 stable)
    assert (schedule_at(9_000_000, cfg).res, schedule_at(9_000_000, cfg).lr) == (512, 0.001)
    # kimg 9300: t = 900 -> lod 0.5: 1024 fading in, batch 4, lr 0.0015
    s = schedule_at(9_300_000, cfg)
    assert (s.res, s.minibatch, s.lr, s.alpha) == (1024, 4, 0.0015, 0.5)


def test_short_phases_and_odd_split():
    # target 16 (lod 2 at the start), stable 2 kimg, fade 3 kimg: at kimg 4, phase 0, t = 4 -> lod 2 - 2/3.
    cfg = TrainConfig(data="x.h5", target=16, stable_kimg=2, fade_kimg=3, minibatch={4: 8, 8: 4, 16: 2})
    s = schedule_at(4000, cfg)
    assert s.lod == pytest.approx(4 / 3)
    assert (s.res, s.minibatch) == (8, 4)
    assert s.alpha == pytest.approx(2 / 3)
    # 2 growths of 5 kimg, then a stable phase of 2: training ends at 12 kimg unless told otherwise.
    assert cfg.end_kimg == 12
    assert cfg.replace(total_kimg=3.5).end_kimg == 3.5


def test_default_length_for_128_is_target_plus_one_stable_phase():
    # lod reaches 0 at 5 x 1200 = 6000 kimg, then 600 more.
    assert TrainConfig(data="x.h5", target=128).end_kimg == 6600


@pytest.mark.parametrize("prev, cur, reset", [
    (5.0, 5.0, False),  # stable
    (5.0, 4.99, True),  # a fade starts: ceil 5 -> 5, floor 5 -> 4
    (4.6, 4.5, False),  # inside a fade
    (4.01, 4.0, True),  # the fade ends: ceil 5 -> 4
    (4.0, 4.0, False),
    (0.0, 0.0, False),
])
def test_adam_reset_when_floor_or_ceil_of_lod_changes(prev, cur, reset):
    assert adam_reset_needed(prev, cur) is reset


def test_config_json_round_trip(tmp_path):
    cfg = TrainConfig(data="/d/x.h5", target=64, minibatch={4: 32, 8: 16}, grid=(4, 2), metrics=("fid10k", "swd"))
    cfg.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == cfg


def test_minibatch_option():
    assert parse_minibatch("32") == {res: 32 for res in DEFAULT_MINIBATCH}
    assert parse_minibatch("4:256,8:64") == {**DEFAULT_MINIBATCH, 4: 256, 8: 64}
    with pytest.raises(UsageError):
        parse_minibatch("big")


def test_resume_may_change_runtime_options_only():
    saved = TrainConfig(data="/d/x.h5", target=64)
    assert resumed_config(saved, {"total_kimg": 10.0, "workers": 0}).total_kimg == 10.0
    assert resumed_config(saved, {"target": 64}) == saved  # repeating a value is fine
    with pytest.raises(UsageError, match="--fmap-base"):
        resumed_config(saved, {"fmap_base": 1024})


@pytest.mark.parametrize("bad", [{"target": 48}, {"target": 2048}, {"loss": "hinge"}, {"precision": "fp16"},
                                 {"stable_kimg": 0}])
def test_bad_options_are_usage_errors(bad):
    with pytest.raises(UsageError):
        TrainConfig(data="x.h5", **bad)
