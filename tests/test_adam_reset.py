"""Adam restarts where the official rule says, in a real run: the `step` count Adam keeps per parameter, read
from the checkpoints `training_loop` writes, equals the number of steps since the last reset counted by hand
from the schedule; with reset_adam=False it counts every step the parameter ever took."""

from __future__ import annotations

import pytest

from conftest import photo_pyramid
from progan_cli.checkpoints import list_checkpoints, load_checkpoint
from progan_cli.config import TrainConfig
from progan_cli.training.loop import training_loop

pytestmark = pytest.mark.usefixtures("one_thread")

# Target 8, 32 images stable at 4x4, 32 fading in 8x8, then 8x8 stable to 96; one minibatch of 8 per schedule
# update, so the schedule is read at cur_nimg 0, 8, ..., 88 and each update is one Adam step.
# lod = 1 up to 32 (inclusive: t - stable = 0); 40: 0.75, 48: 0.5, 56: 0.25; 64 on: 0.
# floor/ceil of lod change at 40 (floor 1 -> 0, the fade starts) and at 64 (ceil 1 -> 0, the fade ends):
# Adam restarts at the updates at 40 and 64. A tick is 16 images (two steps), with a checkpoint after each.
STEPS_SINCE_RESET = {16: 2, 32: 4, 48: 1, 64: 3, 80: 2, 96: 4}  # cur_nimg of the checkpoint -> Adam steps
STEPS_IN_ALL = {nimg: nimg // 8 for nimg in STEPS_SINCE_RESET}  # layers used from the first step on
STEPS_OF_8x8_LAYERS = {48: 1, 64: 3, 80: 5, 96: 7}  # the 8x8 block and its toRGB/fromRGB appear at 40


def _adam_steps(state: dict) -> list[int]:
    return sorted({int(s["step"]) for s in state["state"].values()})


def _run(tmp_path, reset_adam: bool) -> dict[int, dict]:
    cfg = TrainConfig(data=str(photo_pyramid(tmp_path / "photos.h5", 8)), target=8, fmap_base=128, fmap_max=64,
                      latent_size=32, stable_kimg=0.032, fade_kimg=0.032, total_kimg=0.096, minibatch={4: 8, 8: 8},
                      minibatch_repeats=1, tick_kimg=0.016, snapshot_ticks=1, keep_checkpoints=10, grid=(2, 2),
                      device="cpu", workers=0, reset_adam=reset_adam)
    training_loop(cfg, tmp_path / "run")
    states = [load_checkpoint(p) for p in list_checkpoints(tmp_path / "run")]
    return {s["progress"]["cur_nimg"]: s for s in states}


def test_adam_restarts_when_a_fade_starts_and_when_it_ends(tmp_path):
    ckpts = _run(tmp_path, reset_adam=True)
    assert sorted(ckpts) == sorted(STEPS_SINCE_RESET)
    for nimg, steps in STEPS_SINCE_RESET.items():
        for opt in ("opt_G", "opt_D"):
            # every parameter Adam holds state for has taken exactly the steps since the last restart
            assert _adam_steps(ckpts[nimg][opt]) == [steps], (nimg, opt)


def test_without_reset_adam_counts_every_step(tmp_path):
    ckpts = _run(tmp_path, reset_adam=False)
    for nimg, steps in STEPS_IN_ALL.items():
        for opt in ("opt_G", "opt_D"):
            counts = _adam_steps(ckpts[nimg][opt])
            assert max(counts) == steps, (nimg, opt, counts)
            if nimg in STEPS_OF_8x8_LAYERS:  # the new layers' state starts with their first gradient
                assert min(counts) == STEPS_OF_8x8_LAYERS[nimg], (nimg, opt, counts)
            else:
                assert counts == [steps], (nimg, opt, counts)
