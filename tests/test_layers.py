"""Equalized-lr layers, pixel norm and minibatch stddev against numpy written from the paper's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from progan_cli.networks.layers import (
    EqualizedConv2d,
    EqualizedLinear,
    minibatch_stddev,
    nf,
    pixel_norm,
)


def np_conv_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross-correlation with zero 'same' padding, by explicit loops over kernel taps. x NCHW, w OIkk."""
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n, o, h, wd)) + b[None, :, None, None]
    for dy in range(k):
        for dx in range(k):
            patch = xp[:, :, dy : dy + h, dx : dx + wd]  # (n, c, h, w)
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, dy, dx])
    return out


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape)).float()


def test_pixel_norm_matches_formula():
    x = _rand(3, 5, 4, 2)
    a = x.numpy().astype(np.float64)
    expected = a / np.sqrt((a**2).mean(axis=1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(pixel_norm(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    # A zero vector stays zero (eps keeps it finite) and a latent (N, C) is normalised over C.
    assert torch.equal(pixel_norm(torch.zeros(1, 4, 2, 2)), torch.zeros(1, 4, 2, 2))
    z = _rand(2, 6)
    expected = z.numpy() / np.sqrt((z.numpy() ** 2).mean(axis=1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(pixel_norm(z).numpy(), expected, rtol=1e-5)


@pytest.fixture
def cuda_autocast_policy():
    """CPU autocast made to run rsqrt and pow (torch.square) in fp32, as CUDA autocast's fp32 list does."""
    lib = torch.library.Library("aten", "IMPL")
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def in_fp32(op):
        def run(*args):
            with torch._C._ExcludeDispatchKeyGuard(keys):
                return op(*[a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                            for a in args])
        return run

    lib.impl("rsqrt", in_fp32(torch.ops.aten.rsqrt.default), "AutocastCPU")
    lib.impl("pow.Tensor_Scalar", in_fp32(torch.ops.aten.pow.Tensor_Scalar), "AutocastCPU")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.rsqrt(torch.ones(1, dtype=torch.bfloat16)).dtype == torch.float32
    yield
    lib._destroy()


@pytest.mark.parametrize("policy", ["cpu", "cuda", "off"])
def test_pixel_norm_keeps_bf16(policy, request):
    # Under autocast (the CPU's, or with CUDA's fp32 rsqrt and pow) and without it, a bf16 activation comes out
    # bf16, rounded once from the exact value: within half a bf16 ulp, 2^-8 relative (plus fp32 noise).
    if policy == "cuda":
        request.getfixturevalue("cuda_autocast_policy")
    x = (_rand(4, 16, 5, 3, seed=1) * 3).bfloat16()
    a = x.float().numpy().astype(np.float64)
    expected = a / np.sqrt((a**2).mean(axis=1, keepdims=True) + 1e-8)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=policy != "off"):
        out = pixel_norm(x)
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.float().numpy(), expected, rtol=2**-8 + 1e-6, atol=0)


def test_pixel_norm_fp32_is_unchanged_under_autocast():
    # fp32 activations (the fp32 policy, or layers autocast leaves in fp32) keep the exact fp32 formula.
    x = _rand(3, 8, 4, 4, seed=2)
    before = x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(pixel_norm(x), before)
    assert torch.equal(pixel_norm(x), before)
    assert pixel_norm(x.double()).dtype == torch.float64


@pytest.mark.parametrize("n, group_size", [(8, 4), (6, 2), (3, 4), (4, 1), (12, 4)])
def test_minibatch_stddev_matches_numpy_loop(n, group_size):
    x = _rand(n, 3, 4, 5, seed=n)
    out = minibatch_stddev(x, group_size).numpy()
    a = x.numpy().astype(np.float64)
    g = min(group_size, n)
    m = n // g
    expected_map = np.empty(n)
    for j in range(m):  # group j holds samples j, j + m, j + 2m, ...
        members = [i for i in range(n) if i % m == j]
        group = a[members]
        var = ((group - group.mean(axis=0)) ** 2).mean(axis=0)  # biased
        value = np.sqrt(var + 1e-8).mean()
        expected_map[members] = value
    assert out.shape == (n, 4, 4, 5)
    np.testing.assert_array_equal(out[:, :3], x.numpy())
    np.testing.assert_allclose(out[:, 3], np.broadcast_to(expected_map[:, None, None], (n, 4, 5)), rtol=1e-5)


def test_minibatch_stddev_by_hand():
    # Two samples in one group: per feature |a - b| / 2 (+ eps); mean over features.
    x = torch.tensor([[[[1.0, 3.0]]], [[[3.0, -1.0]]]])  # (2, 1, 1, 2)
    out = minibatch_stddev(x, 4)
    expected = (math.sqrt(1 + 1e-8) + math.sqrt(4 + 1e-8)) / 2
    assert out[:, 1].flatten().tolist() == pytest.approx([expected] * 4)


def test_minibatch_stddev_rejects_ragged_batch():
    with pytest.raises(ValueError, match="multiple of the group size"):
        minibatch_stddev(torch.zeros(6, 2, 4, 4), 4)


def test_minibatch_stddev_keeps_bf16():
    out = minibatch_stddev(_rand(4, 2, 4, 4).bfloat16())
    assert out.dtype == torch.bfloat16


def _equalized(conv: torch.nn.Module) -> torch.nn.Module:
    """Give a layer non-zero biases so the test sees that they are added unscaled."""
    with torch.no_grad():
        conv.bias.copy_(torch.linspace(-1, 1, conv.bias.numel()))
    return conv


@pytest.mark.parametrize("k, gain", [(3, math.sqrt(2)), (1, 1.0)])
def test_equalized_conv_matches_numpy(k, gain):
    torch.manual_seed(0)
    conv = _equalized(EqualizedConv2d(5, 4, k, gain=gain))
    x = _rand(2, 5, 6, 7)
    w = conv.weight.detach().double().numpy() * gain / math.sqrt(5 * k * k)
    expected = np_conv_same(x.double().numpy(), w, conv.bias.detach().double().numpy())
    np.testing.assert_allclose(conv(x).detach().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_fused_upsample_conv_matches_nearest_then_conv():
    torch.manual_seed(1)
    conv = _equalized(EqualizedConv2d(4, 3, 3, resample="up"))
    x = _rand(2, 4, 5, 5)
    up = x.double().numpy().repeat(2, axis=2).repeat(2, axis=3)  # nearest x2
    w = conv.weight.detach().double().numpy() * math.sqrt(2) / math.sqrt(4 * 9)
    expected = np_conv_same(up, w, conv.bias.detach().double().numpy())
    np.testing.assert_allclose(conv(x).detach().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_fused_conv_downsample_matches_conv_then_box_average():
    torch.manual_seed(2)
    conv = _equalized(EqualizedConv2d(4, 3, 3, resample="down"))
    x = _rand(2, 4, 6, 6)
    w = conv.weight.detach().double().numpy() * math.sqrt(2) / math.sqrt(4 * 9)
    full = np_conv_same(x.double().numpy(), w, conv.bias.detach().double().numpy())
    expected = full.reshape(2, 3, 3, 2, 3, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(conv(x).detach().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_equalized_linear_matches_numpy():
    torch.manual_seed(3)
    lin = _equalized(EqualizedLinear(7, 3, gain=math.sqrt(2) / 4))
    x = _rand(4, 7)
    w = lin.weight.detach().double().numpy() * (math.sqrt(2) / 4) / math.sqrt(7)
    expected = x.double().numpy() @ w.T + lin.bias.detach().double().numpy()
    np.testing.assert_allclose(lin(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert EqualizedLinear(7, 3, bias=False).bias is None


def test_init_is_standard_normal_with_zero_bias():
    torch.manual_seed(4)
    conv = EqualizedConv2d(256, 256, 3)
    w = conv.weight.detach().numpy()
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1.0) < 0.01
    assert not conv.bias.detach().any()
    assert not EqualizedLinear(512, 512).bias.detach().any()


def test_widths_follow_official_nf():
    assert [nf(s) for s in range(1, 10)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert [nf(s, fmap_base=64, fmap_max=16) for s in range(0, 5)] == [16, 16, 16, 8, 4]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pixel_norm_keeps_bf16_under_cuda_autocast():
    x = (_rand(4, 16, 5, 3, seed=1) * 3).bfloat16()
    a = x.float().numpy().astype(np.float64)
    expected = a / np.sqrt((a**2).mean(axis=1, keepdims=True) + 1e-8)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = pixel_norm(x.cuda())
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.float().cpu().numpy(), expected, rtol=2**-8 + 1e-6, atol=0)


# ------------------------------------------------------------------ pytorch_GAN_zoo's minibatch stddev variant


@pytest.mark.parametrize("n", [8, 4, 6, 2])
def test_gan_zoo_minibatch_stddev_matches_numpy_loop(n):
    # The zoo's miniBatchStdDev: consecutive samples grouped by 4 (all N in one group when 4 does not divide
    # N), unbiased variance, sqrt(var + 1e-8) averaged over C, H, W.
    x = _rand(n, 3, 4, 5, seed=n + 10)
    out = minibatch_stddev(x, 4, "gan-zoo").numpy()
    a = x.numpy().astype(np.float64)
    g = min(4, n) if n % min(4, n) == 0 else n
    expected_map = np.empty(n)
    for start in range(0, n, g):
        group = a[start:start + g]
        var = ((group - group.mean(axis=0)) ** 2).sum(axis=0) / (g - 1)
        expected_map[start:start + g] = np.sqrt(var + 1e-8).mean()
    np.testing.assert_array_equal(out[:, :3], x.numpy())
    np.testing.assert_allclose(out[:, 3], np.broadcast_to(expected_map[:, None, None], (n, 4, 5)), rtol=1e-5)


def test_gan_zoo_minibatch_stddev_by_hand_and_alone():
    # Two samples: unbiased variance (a - b)^2 / 2 per feature, so sqrt is |a - b| / sqrt(2).
    x = torch.tensor([[[[1.0, 3.0]]], [[[3.0, -1.0]]]])
    expected = (math.sqrt(2 + 1e-8) + math.sqrt(8 + 1e-8)) / 2
    assert minibatch_stddev(x, 4, "gan-zoo")[:, 1].flatten().tolist() == pytest.approx([expected] * 4)
    # A lone sample has no spread to measure: the zoo appends zeros (the official formula gives sqrt(1e-8)).
    assert minibatch_stddev(x[:1], 4, "gan-zoo")[:, 1].abs().max() == 0
    with pytest.raises(ValueError, match="variant"):
        minibatch_stddev(x, 4, "other")
