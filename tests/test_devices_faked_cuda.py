"""Device faults on a GPU machine give one line before any work; checked here with torch.cuda faked to report
one visible GPU (the code under test only asks torch.cuda how many GPUs there are)."""

from __future__ import annotations

import pytest
import torch

from progan_cli.devices import resolve_device
from progan_cli.errors import UsageError
from progan_cli.training.distributed import init_distributed


@pytest.fixture
def one_fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    calls: list = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    return calls


def test_gpu_index_past_the_last_one(one_fake_gpu):
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UsageError, match=r"--device cuda:7: this machine has 1 CUDA GPU\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:7")


def test_single_process_on_a_numbered_gpu_makes_it_current(one_fake_gpu, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist, note = init_distributed("cuda:0")
    assert dist.world == 1 and dist.device == torch.device("cuda", 0) and note is None
    assert one_fake_gpu == [torch.device("cuda", 0)]


def test_ranks_without_local_rank_refused(one_fake_gpu, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(UsageError, match="LOCAL_RANK is not"):
        init_distributed("cuda")
    monkeypatch.setenv("LOCAL_RANK", "3")  # a rank placed on a GPU this machine lacks
    with pytest.raises(UsageError, match="cuda:3: this machine has 1"):
        init_distributed("cuda")
    assert one_fake_gpu == []  # refused before touching any GPU
