"""Generator and discriminator: official parameter counts, the fade-in paths computed by hand, shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from progan_cli.networks import Discriminator, Generator
from progan_cli.networks.layers import pixel_norm

TINY = dict(fmap_base=128, fmap_max=16)
LATENT = 8


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_parameter_counts_match_official_at_1024():
    torch.manual_seed(0)
    assert _params(Generator(1024)) == 23_079_115
    assert _params(Discriminator(1024)) == 23_087_249


def _nets(resolution: int = 32, seed: int = 0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    G = Generator(resolution, latent_size=LATENT, **TINY)
    D = Discriminator(resolution, **TINY)
    with torch.no_grad():  # non-zero biases, so their handling shows in every comparison
        for p in [*G.parameters(), *D.parameters()]:
            if p.ndim == 1:
                p.uniform_(-0.2, 0.2)
    return G, D


def _nearest_up(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().repeat(2, axis=2).repeat(2, axis=3)


def _box_down(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return torch.from_numpy(x.numpy().reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5)))


@torch.no_grad()
def test_generator_4x4_by_hand():
    G, _ = _nets()
    z = torch.randn(3, LATENT)
    stem = G.blocks[0]
    zn = z.numpy() / np.sqrt((z.numpy() ** 2).mean(axis=1, keepdims=True) + 1e-8)
    dense_w = stem.dense.weight.numpy() * (math.sqrt(2) / 4) / math.sqrt(LATENT)
    x = (zn @ dense_w.T).reshape(3, -1, 4, 4) + stem.bias.numpy()[None, :, None, None]
    x = pixel_norm(F.leaky_relu(torch.from_numpy(x), 0.2))
    x = pixel_norm(F.leaky_relu(stem.conv(x), 0.2))
    expected = G.to_rgb[0](x)
    torch.testing.assert_close(G(z, 4), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("res", [8, 32])
def test_generator_fade_in_endpoints(res):
    G, _ = _nets()
    z = torch.randn(4, LATENT)
    k = int(math.log2(res)) - 2
    h_old = z
    for block in G.blocks[:k]:
        h_old = block(h_old)
    new = G.to_rgb[k](G.blocks[k](h_old))
    old = torch.from_numpy(_nearest_up(G.to_rgb[k - 1](h_old)))
    torch.testing.assert_close(G(z, res, 1.0), new)
    torch.testing.assert_close(G(z, res, 0.0), old)
    torch.testing.assert_close(G(z, res, 0.25), 0.75 * old + 0.25 * new)
    # alpha as a 0-d tensor (no recompiles per value under torch.compile) gives the same image.
    torch.testing.assert_close(G(z, res, torch.tensor(0.25)), G(z, res, 0.25))


@torch.no_grad()
@pytest.mark.parametrize("res", [8, 32])
def test_discriminator_fade_in_endpoints(res):
    _, D = _nets()
    x = torch.randn(4, 3, res, res)
    k = int(math.log2(res)) - 2

    def rest(h: torch.Tensor) -> torch.Tensor:  # the blocks below the newest one, by hand
        for block in reversed(D.blocks[:k]):
            h = block(h)
        return h

    new = D.blocks[k](F.leaky_relu(D.from_rgb[k](x), 0.2))
    old = F.leaky_relu(D.from_rgb[k - 1](_box_down(x)), 0.2)
    torch.testing.assert_close(D(x, 1.0), rest(new))
    torch.testing.assert_close(D(x, 0.0), rest(old))
    torch.testing.assert_close(D(x, 0.75), rest(0.25 * old + 0.75 * new))
    torch.testing.assert_close(D(x, torch.tensor(0.75)), D(x, 0.75))


@torch.no_grad()
def test_discriminator_4x4_head_by_hand():
    _, D = _nets()
    x = torch.randn(4, 3, 4, 4)
    head = D.blocks[0]
    h = F.leaky_relu(D.from_rgb[0](x), 0.2)
    std = h.numpy().std(axis=0)  # one group of all 4 samples, biased
    mb = np.sqrt(std**2 + 1e-8).mean()
    h = torch.cat([h, torch.full((4, 1, 4, 4), float(mb))], dim=1)
    h = F.leaky_relu(head.conv(h), 0.2).flatten(1)
    h = F.leaky_relu(h @ (head.dense0.weight * math.sqrt(2) / math.sqrt(h.shape[1])).T + head.dense0.bias, 0.2)
    expected = h @ (head.dense1.weight / math.sqrt(h.shape[1])).T + head.dense1.bias
    torch.testing.assert_close(D(x), expected.squeeze(1), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_shapes_at_every_resolution():
    G, D = _nets(64)
    z = torch.randn(4, LATENT)
    for res in [4, 8, 16, 32, 64]:
        for alpha in [0.0, 0.5, 1.0]:
            img = G(z, res, alpha)
            assert img.shape == (4, 3, res, res) and img.dtype == torch.float32
            assert D(img, alpha).shape == (4,)


@torch.no_grad()
def test_bf16_autocast_and_channels_last():
    G, D = _nets()
    z = torch.randn(4, LATENT)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(z, 16, 0.5)
        scores = D(img, 0.5)
    assert img.dtype == torch.bfloat16 and scores.dtype == torch.bfloat16
    ref_img, ref_scores = G(z, 16, 0.5), D(G(z, 16, 0.5), 0.5)
    G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    torch.testing.assert_close(G(z, 16, 0.5), ref_img, rtol=1e-4, atol=1e-5)
    x = ref_img.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(D(x, 0.5), ref_scores, rtol=1e-4, atol=1e-5)


def test_bad_resolution_and_alpha_raise():
    G, D = _nets()
    z = torch.randn(2, LATENT)
    for res in [2, 12, 64]:
        with pytest.raises(ValueError, match="power of two"):
            G(z, res)
    with pytest.raises(ValueError, match="alpha"):
        G(z, 8, 1.5)
    with pytest.raises(ValueError, match="shape"):
        G(torch.randn(2, LATENT + 1), 8)
    with pytest.raises(ValueError, match="shape"):
        D(torch.randn(2, 3, 8, 16))
    with pytest.raises(ValueError, match="power of two"):
        Generator(48)


# ------------------------------------------------------------------------------ variants of published networks


def test_non_fused_d_block_pools_after_the_activation():
    """d_fused=False: pool(lrelu(conv1(lrelu(conv0(x))) + b)), computed here with numpy from the weights;
    the fused block (lrelu after the pool) is a different function of the same parameters."""
    from progan_cli.networks.discriminator import DBlock

    torch.manual_seed(0)
    block = DBlock(3, 2, fused=False)
    fused = DBlock(3, 2, fused=True)
    for conv in (block.conv0, block.conv1):
        conv.bias.data.normal_()
    fused.load_state_dict(block.state_dict())
    x = torch.randn(2, 3, 4, 4)

    def conv3x3(a, w, b, scale):  # 'same' cross-correlation in float64
        padded = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((a.shape[0], w.shape[0], a.shape[2], a.shape[3]))
        for ky in range(3):
            for kx in range(3):
                window = padded[:, :, ky:ky + a.shape[2], kx:kx + a.shape[3]]
                out += np.einsum("nchw,oc->nohw", window, w[:, :, ky, kx])
        return out * scale + b[None, :, None, None]

    def lrelu_np(a):
        return np.where(a > 0, a, 0.2 * a)

    p = {k: v.double().numpy() for k, v in block.state_dict().items()}
    h = lrelu_np(conv3x3(x.double().numpy(), p["conv0.weight"], p["conv0.bias"], math.sqrt(2 / 27)))
    h = lrelu_np(conv3x3(h, p["conv1.weight"], p["conv1.bias"], math.sqrt(2 / 27)))
    expected = h.reshape(2, 2, 2, 2, 2, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(block(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fused(x), block(x), atol=1e-3)


def test_per_position_stem_bias_adds_one_bias_per_pixel():
    """stem_bias="position" (the zoo's formatLayer): lrelu(W z + b) with b of shape (C, 4, 4), then pixel norm."""
    from progan_cli.networks.generator import GStem

    torch.manual_seed(1)
    stem = GStem(8, 4, stem_bias="position")
    assert stem.bias.shape == (4, 4, 4)
    stem.bias.data.normal_()
    z = torch.randn(3, 8)
    zn = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
    x = (zn @ (stem.dense.weight * stem.dense.scale).T).reshape(3, 4, 4, 4) + stem.bias
    x = torch.nn.functional.leaky_relu(x, 0.2)
    x = x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-8)
    y = torch.nn.functional.leaky_relu(stem.conv(x), 0.2)
    torch.testing.assert_close(stem(z), y * torch.rsqrt(y.square().mean(1, keepdim=True) + 1e-8))
    with pytest.raises(ValueError, match="stem_bias"):
        GStem(8, 4, stem_bias="pixel")
