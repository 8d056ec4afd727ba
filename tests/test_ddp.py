"""Two CPU processes (gloo) train one run: the ranks stay identical and match a single process.

Why they can match: each rank takes samples r, r + 2, ... of every global minibatch (data and latents), so
the minibatch-stddev groups (sample i with the samples i mod N/4) are the same as in one process; the
averaged gradient differs from the single-process one only by float summation order. The loss is LSGAN
here because WGAN-GP draws its penalty's mixing weights per rank (a batch of N/2 on each of two ranks from
the same stream), which is a different, equally valid, draw from the single process's N: with WGAN-GP the
ranks still agree exactly with each other but not with a single process.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from progan_cli.checkpoints import load_checkpoint
from progan_cli.config import TrainConfig
from progan_cli.training.loop import training_loop
from conftest import photo_pyramid

pytestmark = pytest.mark.usefixtures("one_thread")


def _rank_main(rank: int, world: int, port: int, cfg: TrainConfig, run_dir: str, out: str) -> None:
    from progan_cli.training.distributed import init_distributed

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist, _ = init_distributed("cpu")
    try:
        state = training_loop(cfg, run_dir, dist=dist)
        torch.save({name: getattr(state.nets, name).state_dict() for name in ("G", "D", "G_ema")},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_gloo_ranks_stay_in_sync_and_match_one_process(tmp_path):
    data = photo_pyramid(tmp_path / "photos.h5", 8)
    # Global minibatch 8 = 4 per rank = one stddev group per rank; 32 images per schedule update; phases of
    # 64 + 64 images, so the 64 x 3 = 192 images cover a stable 4x4, the fade to 8x8 and a stable 8x8.
    cfg = TrainConfig(data=str(data), target=8, fmap_base=64, fmap_max=32, latent_size=16, stable_kimg=0.064,
                      fade_kimg=0.064, minibatch={4: 8, 8: 8}, tick_kimg=0.064, loss="lsgan", device="cpu",
                      workers=0, grid=(2, 2))
    mp.spawn(_rank_main, args=(2, _free_port(), cfg, str(tmp_path / "ddp"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in ("G", "D", "G_ema"):  # the ranks hold the very same networks
        assert all(torch.equal(ranks[0][name][k], ranks[1][name][k]) for k in ranks[0][name]), name

    single = training_loop(cfg, tmp_path / "single")
    for name in ("G", "D", "G_ema"):
        diff = _max_diff(ranks[0][name], getattr(single.nets, name).state_dict())
        assert diff < 1e-4, (name, diff)  # summation order only; weights are O(1)

    # Rank 0 alone wrote the run; a single process resumes it (any rank count can) and goes on.
    assert len((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()) == 3
    more = cfg.replace(total_kimg=0.256)
    resumed = training_loop(more, tmp_path / "ddp", resume=load_checkpoint(tmp_path / "ddp"))
    reference = training_loop(more, tmp_path / "single-longer")
    assert resumed.cur_nimg == reference.cur_nimg == 256
    diff = _max_diff(resumed.nets.G.state_dict(), reference.nets.G.state_dict())
    assert diff < 1e-4, diff
