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
