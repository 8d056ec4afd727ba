"""Self-tests of the independent oracles in tests/reference (official_numpy, zoo_numpy, network_files): the
importer tests hold progan to them, so they must be right on their own. Nothing here imports progan_cli.

What is pinned: the numpy convolutions against torch and against TensorFlow's definition (conv2d_transpose
is the adjoint of the strided conv2d); the documented fused/non-fused relations; hand-computed pixel norm,
leaky ReLU and both minibatch-stddev variants; the lod and alpha blends against smaller networks; and the
writers' bytes (numpy 1.x names, tfutil.Network via NEWOBJ + BUILD, models.utils.config.BaseConfig as a real
foreign global that torch's weights_only loader refuses)."""

from __future__ import annotations

import copy
import pickle
import pickletools
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference import network_files as nfiles
from reference import official_numpy as off
from reference import zoo_numpy as zoo

ARCH = dict(fmap_base=64, fmap_max=16, latent_size=12)  # widths 16 everywhere: tiny and fast


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------------
# Convolutions

@pytest.mark.parametrize("k, stride, pad", [(3, 1, 1), (1, 1, 0), (4, 2, 1)])
def test_conv2d_is_torch_cross_correlation_with_same_padding(k, stride, pad):
    x, w = rng(0).standard_normal((2, 3, 8, 8)), rng(1).standard_normal((k, k, 3, 5))  # [kh, kw, in, out]
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w.transpose(3, 2, 0, 1).copy()), stride=stride, padding=pad)
    np.testing.assert_allclose(off.conv2d(x, w, stride), ref.numpy(), rtol=1e-12, atol=1e-12)


def test_conv2d_transpose_is_torch_conv_transpose():
    """The fused 4x4 kernel at stride 2, 'SAME' from H to 2H: torch's padding 1; a 3x3 kernel: TF drops the
    last row and column (its padding is 0 before, 1 after), torch's padding 0 keeps them."""
    x = rng(0).standard_normal((2, 3, 4, 4))
    w4, w3 = rng(1).standard_normal((4, 4, 5, 3)), rng(2).standard_normal((3, 3, 5, 3))  # [kh, kw, out, in]
    t4, t3 = (torch.from_numpy(w.transpose(3, 2, 0, 1).copy()) for w in (w4, w3))
    ref4 = F.conv_transpose2d(torch.from_numpy(x), t4, stride=2, padding=1)
    np.testing.assert_allclose(off.conv2d_transpose(x, w4, (8, 8)), ref4.numpy(), rtol=1e-12, atol=1e-12)
    ref3 = F.conv_transpose2d(torch.from_numpy(x), t3, stride=2)
    np.testing.assert_allclose(off.conv2d_transpose(x, w3, (8, 8)), ref3.numpy()[:, :, :8, :8], rtol=1e-12, atol=1e-12)


def test_conv2d_transpose_is_the_gradient_of_the_strided_conv():
    """TF's definition, checked without torch: <conv(z, w), x> = <z, conv_transpose(x, w)> for all z, x."""
    w = rng(0).standard_normal((4, 4, 3, 5))  # forward: [k, k, in 3, out 5]; transpose reads it as [k, k, out 3, in 5]
    z, x = rng(1).standard_normal((2, 3, 8, 8)), rng(2).standard_normal((2, 5, 4, 4))
    lhs = np.sum(off.conv2d(z, w, stride=2) * x)
    rhs = np.sum(z * off.conv2d_transpose(x, w, (8, 8), stride=2))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_fused_down_conv_is_conv_then_average_pool():
    """conv2d_downscale2d's kernel (pad-and-sum, / 4) at stride 2 equals a 3x3 conv followed by the 2x2 average
    pool; so fused and non-fused D differ only in where the leaky ReLU sits."""
    x, w = rng(0).standard_normal((2, 3, 8, 8)), rng(1).standard_normal((3, 3, 3, 4))
    np.testing.assert_allclose(off.conv2d(x, off.pad_and_sum_kernel(w) * 0.25, stride=2),
                               off.downscale2d(off.conv2d(x, w)), rtol=1e-12, atol=1e-12)


def _unfuse(variables: dict, *, flip: bool = True) -> dict:
    """Non-fused G from fused: Conv0 [k, k, in, out] = Conv0_up [k, k, out, in] flipped in both spatial axes
    and with its channel axes swapped (the documented relation)."""
    plain = {}
    for name, value in variables.items():
        if "/Conv0_up/" in name:
            name = name.replace("/Conv0_up/", "/Conv0/")
            if name.endswith("/weight"):
                value = (value[::-1, ::-1] if flip else value).transpose(0, 1, 3, 2).copy()
        plain[name] = value
    return plain


def test_fused_and_non_fused_g_agree_through_the_flip():
    fused = dict(nfiles.official_variables("G", 16, fused=True, seed=3, **ARCH))
    z = rng(4).standard_normal((3, ARCH["latent_size"]))
    out = off.official_G(fused, z)
    assert out.shape == (3, 3, 16, 16)
    np.testing.assert_allclose(off.official_G(_unfuse(fused), z), out, rtol=1e-10, atol=1e-10)
    # Without the flip it is another function: the test would catch an importer that forgets it.
    assert np.abs(off.official_G(_unfuse(fused, flip=False), z) - out).max() > 1e-2


# ----------------------------------------------------------------------------------------------------------
# Hand-computed layers

def test_pixel_norm_and_lrelu_by_hand():
    x = np.array([[3.0, 4.0]])  # mean square 12.5
    np.testing.assert_allclose(off.pixel_norm(x), x / np.sqrt(12.5 + 1e-8), rtol=1e-15)
    np.testing.assert_allclose(off.pixel_norm(np.zeros((1, 2, 1, 1))), 0.0)
    np.testing.assert_array_equal(off.lrelu(np.array([-1.0, 0.0, 2.0])), [-0.2, 0.0, 2.0])
    np.testing.assert_array_equal(zoo._lrelu(np.array([-1.0, 0.0, 2.0]), 0.2), [-0.2, 0.0, 2.0])


def _one_pixel(values):
    return np.asarray(values, dtype=np.float64).reshape(-1, 1, 1, 1)


def test_official_minibatch_stddev_by_hand():
    """Samples 0, 1, 4, 9. Group size 4: one group, the biased variance of all four; group size 2: M = 2 groups
    of the samples i mod 2, {0, 4} (std 2) and {1, 9} (std 4), not the contiguous {0, 1}, {4, 9}."""
    x = _one_pixel([0, 1, 4, 9])
    one = off.minibatch_stddev(x, 4)
    assert one.shape == (4, 2, 1, 1)
    np.testing.assert_allclose(one[:, 1, 0, 0], np.sqrt(np.var([0, 1, 4, 9]) + 1e-8))
    np.testing.assert_allclose(off.minibatch_stddev(x, 2)[:, 1, 0, 0], np.sqrt(np.array([4, 16, 4, 16]) + 1e-8))
    np.testing.assert_array_equal(off.minibatch_stddev(x, 2)[:, 0], x[:, 0])  # the input channels come first
    with pytest.raises(ValueError):
        off.minibatch_stddev(_one_pixel([0, 1, 2, 3, 4, 5]), 4)  # TF's reshape fails when N % G


def test_zoo_minibatch_stddev_by_hand():
    """The zoo groups contiguous samples with the unbiased variance: {0, 1} and {4, 9} at N = 4 with groups of
    2; N = 5 is not divisible by 4, so one group of 5; N = 1 gives zeros."""
    x = _one_pixel([0, 1, 4, 9])
    np.testing.assert_allclose(zoo.zoo_minibatch_stddev(x, 2)[:, 1, 0, 0],
                               np.sqrt(np.array([0.5, 0.5, 12.5, 12.5]) + 1e-8))
    np.testing.assert_allclose(zoo.zoo_minibatch_stddev(x)[:, 1, 0, 0], np.sqrt(np.var([0, 1, 4, 9], ddof=1) + 1e-8))
    five = _one_pixel([0, 1, 4, 9, 16])
    np.testing.assert_allclose(zoo.zoo_minibatch_stddev(five)[:, 1, 0, 0],
                               np.sqrt(np.var([0, 1, 4, 9, 16], ddof=1) + 1e-8))
    np.testing.assert_array_equal(zoo.zoo_minibatch_stddev(_one_pixel([3.0]))[:, 1], 0.0)


def test_official_uint8():
    x = np.array([-1.5, -1.0, 0.0, 1.0, 1.5, 0.5 / 127.5 - 1 + 1e-9], dtype=np.float64)
    np.testing.assert_array_equal(off.official_uint8(x), [0, 0, 128, 255, 255, 1])  # 127.5 rounds to even 128
    assert off.official_uint8(np.float32([0.25])).dtype == np.uint8


# ----------------------------------------------------------------------------------------------------------
# The lod blend against smaller networks

def _top_removed(variables: dict, prefix: str, resolution: int) -> dict:
    """The network one level smaller: drop the top block and its ToRGB/FromRGB, renumber the other lods."""
    top = f"{resolution}x{resolution}/"
    out = {}
    for name, value in variables.items():
        if name.startswith(top) or name.startswith(prefix + "0/"):
            continue
        if name.startswith(prefix):
            lod, rest = name[len(prefix):].split("/", 1)
            name = f"{prefix}{int(lod) - 1}/{rest}"
        out[name] = value
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_official_lod_1_is_the_smaller_network(fused):
    g = dict(nfiles.official_variables("G", 16, fused=fused, seed=1, **ARCH))
    d = dict(nfiles.official_variables("D", 16, fused=fused, seed=2, **ARCH))
    z = rng(3).standard_normal((4, ARCH["latent_size"]))
    small = off.official_G(_top_removed(g, "ToRGB_lod", 16), z)
    np.testing.assert_allclose(off.official_G(g, z, lod=1.0), off.upscale2d(small), rtol=1e-10, atol=1e-10)
    g["lod"] = np.float32(1.0)  # the stored lod is the default
    np.testing.assert_allclose(off.official_G(g, z), off.upscale2d(small), rtol=1e-10, atol=1e-10)
    # Mid-fade: the linear mix of the two.
    full = off.official_G(g, z, lod=0.0)
    np.testing.assert_allclose(off.official_G(g, z, lod=0.25), full + (off.upscale2d(small) - full) * 0.25,
                               rtol=1e-10, atol=1e-10)
    images = rng(4).uniform(-1, 1, (4, 3, 16, 16))
    smaller_d = off.official_D(_top_removed(d, "FromRGB_lod", 16), off.downscale2d(images))
    np.testing.assert_allclose(off.official_D(d, images, lod=1.0), smaller_d, rtol=1e-10, atol=1e-10)


def test_official_d_shapes_labels_and_mbstd_switch():
    d = nfiles.official_variables("D", 8, label_size=2, mbstd=False, **ARCH)
    images = rng(0).uniform(-1, 1, (3, 3, 8, 8))
    assert off.official_D(d, images, mbstd_group_size=0).shape == (3, 3)
    with pytest.raises(ValueError, match="4x4/Conv takes"):
        off.official_D(d, images[:2], mbstd_group_size=4)
    g = nfiles.official_variables("G", 8, label_size=2, **ARCH)
    out = off.official_G(g, rng(1).standard_normal((3, 12)), rng(2).standard_normal((3, 2)))
    assert out.shape == (3, 3, 8, 8) and np.isfinite(out).all()


# ----------------------------------------------------------------------------------------------------------
# The zoo's semantics

def _zoo_smaller(ckpt: dict) -> tuple[dict, dict]:
    """netG and config of the zoo network one scale smaller (the top scale and its toRGB dropped)."""
    cfg = copy.copy(ckpt["config"])
    n = len(cfg.depthOtherScales)
    cfg.depthOtherScales = cfg.depthOtherScales[:-1]
    cfg.alpha = 0.0
    state = {k: v for k, v in ckpt["netG"].items()
             if not k.startswith(f"scaleLayers.{n - 1}.") and not k.startswith(f"toRGBLayers.{n}.")}
    return state, cfg


def test_zoo_alpha_1_is_the_smaller_network_and_the_8px_d_ignores_alpha():
    ckpt = nfiles.zoo_checkpoint(16, [16, 16, 8], 12, alpha=1.0, seed=1)
    z = rng(2).standard_normal((3, 12))
    state, cfg = _zoo_smaller(ckpt)
    np.testing.assert_allclose(zoo.zoo_G(ckpt["netG"], ckpt["config"], z), off.upscale2d(zoo.zoo_G(state, cfg, z)),
                               rtol=1e-10, atol=1e-10)
    assert zoo.zoo_G(ckpt["netG"], ckpt["config"], z).shape == (3, 3, 16, 16)
    # DNet blends only with more than one scale above 4x4 (mergeLayer needs len(scaleLayers) > 1).
    eight = nfiles.zoo_checkpoint(8, [16, 8], 12, alpha=0.5, seed=3)
    images = rng(4).uniform(-1, 1, (4, 3, 8, 8))
    plain = copy.copy(eight["config"])
    plain.alpha = 0.0
    np.testing.assert_array_equal(zoo.zoo_D(eight["netD"], eight["config"], images),
                                  zoo.zoo_D(eight["netD"], plain, images))
    assert np.abs(zoo.zoo_G(eight["netG"], eight["config"], z) - zoo.zoo_G(eight["netG"], plain, z)).max() > 1e-3


def test_zoo_equalized_layers_scale_the_bias():
    """With every weight zero, D's output is the decision bias times sqrt(2 / depth0): the zoo scales conv(x) + b."""
    ckpt = nfiles.zoo_checkpoint(8, [16, 8], 12, seed=0)
    state = {k: (torch.zeros_like(v) if k.endswith("weight") else v) for k, v in ckpt["netD"].items()}
    out = zoo.zoo_D(state, ckpt["config"], rng(1).uniform(-1, 1, (4, 3, 8, 8)))
    b = ckpt["netD"]["decisionLayer.module.bias"].double().numpy()
    np.testing.assert_allclose(out, np.broadcast_to(b * np.sqrt(2 / 16), (4, 1)), rtol=1e-12)
    raw = copy.copy(ckpt["config"])
    raw.equalizedlR = False
    np.testing.assert_allclose(zoo.zoo_D(state, raw, np.zeros((4, 3, 8, 8))), np.broadcast_to(b, (4, 1)), rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# The official pickle writer

class _StubNetwork:
    """Stands in for tfutil.Network when reading the files back: keeps the state, runs nothing."""

    def __setstate__(self, state):
        self.state = state


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("tfutil", "Network"):
            return _StubNetwork
        return super().find_class(module, name)


def _read(path):
    with open(path, "rb") as f:
        return _StubUnpickler(f).load()


def _same_variables(a, b):
    assert [k for k, _ in a] == [k for k, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_official_pickle_bytes_and_round_trip(tmp_path, protocol):
    g = nfiles.official_variables("G", 8, seed=0, **ARCH)
    d = nfiles.official_variables("D", 8, seed=1, fused=True, **ARCH)
    gs = nfiles.official_variables("G", 8, seed=2, lod_scalar=True, **ARCH)
    path = nfiles.write_official_pickle(tmp_path / "net.pkl", g, d, gs, protocol=protocol,
                                        static_kwargs={"D": {"mbstd_group_size": 16}})
    data = path.read_bytes()
    assert b"numpy.core.multiarray" in data and b"tfutil" in data and b"numpy._core" not in data
    assert data[:2] == bytes([0x80, protocol])
    assert (b"_codecs" in data) is (protocol == 2)  # protocol 2 has no bytes opcodes
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert ops.count("NEWOBJ") == 3 and ops.count("BUILD") >= 3
    assert ("STACK_GLOBAL" in ops) is (protocol == 4) and ("GLOBAL" in ops) is (protocol < 4)
    assert "tfutil" not in sys.modules
    G, D, Gs = _read(path)
    assert list(G.state) == ["version", "name", "static_kwargs", "build_module_src", "build_func_name", "variables"]
    assert (G.state["version"], G.state["name"], D.state["name"], Gs.state["name"]) == (2, "G", "D", "Gs")
    assert (G.state["build_func_name"], D.state["build_func_name"]) == ("G_paper", "D_paper")
    assert D.state["static_kwargs"] == {"num_channels": 3, "resolution": 8, "label_size": 0, "fused_scale": True,
                                        "mbstd_group_size": 16}
    for net, ref in ((G, g), (D, d), (Gs, gs)):
        _same_variables(net.state["variables"], ref)
    assert isinstance(Gs.state["variables"][0][1], np.float32) and G.state["variables"][0][1].shape == ()


def test_official_variables_names_and_shapes():
    d = dict(nfiles.official_variables("D", 16, fused=False, label_size=2, fmap_base=64, fmap_max=32, latent_size=8))
    # nf(0..3) = 32, 32, 16, 8; the block of 2^r uses nf(r - 1).
    assert d["FromRGB_lod0/weight"].shape == (1, 1, 3, 8) and d["16x16/Conv1/weight"].shape == (3, 3, 8, 16)
    assert d["FromRGB_lod1/weight"].shape == (1, 1, 3, 16) and d["8x8/Conv1/weight"].shape == (3, 3, 16, 32)
    assert d["4x4/Conv/weight"].shape == (3, 3, 33, 32) and d["4x4/Dense0/weight"].shape == (512, 32)
    assert d["4x4/Dense1/weight"].shape == (32, 3) and d["FromRGB_lod2/weight"].shape == (1, 1, 3, 32)
    g = dict(nfiles.official_variables("G", 16, fmap_base=64, fmap_max=32, latent_size=8, label_size=2))
    assert g["4x4/Dense/weight"].shape == (10, 512) and g["4x4/Dense/bias"].shape == (32,)
    assert g["16x16/Conv0_up/weight"].shape == (3, 3, 8, 16) and g["ToRGB_lod0/weight"].shape == (1, 1, 8, 3)
    assert all(np.abs(v).min() > 0 for k, v in g.items() if k.endswith("/bias"))
    assert all(v.dtype == np.float32 for v in g.values())


def test_a_lone_gs_pickles_alone(tmp_path):
    gs = nfiles.official_variables("G", 8, **ARCH)
    net = _read(nfiles.write_official_pickle(tmp_path / "gs.pkl", None, None, gs))
    assert isinstance(net, _StubNetwork) and net.state["name"] == "Gs"


@pytest.mark.parametrize("how, where", [("exec", "network"), ("system", "network"), ("exec", "variable")])
def test_the_evil_pickle_runs_code_under_plain_pickle(tmp_path, how, where):
    marker = tmp_path / "pwned"
    path = nfiles.evil_pickle(tmp_path / "evil.pkl", marker, how=how, where=where)
    assert not marker.exists()
    try:
        _read(path)  # the stub only supplies tfutil.Network; every other global is pickle's own lookup
    except Exception:
        pass
    assert marker.exists()


def test_the_malicious_source_acts_only_when_executed(tmp_path):
    marker = tmp_path / "exec-ran"
    G, D, Gs = _read(nfiles.official_pickle_with_malicious_src(tmp_path / "src.pkl", marker, resolution=8))
    assert not marker.exists() and G.state["variables"][1][0] == "4x4/Dense/weight"
    try:
        exec(G.state["build_module_src"], {})  # what Network.__setstate__ does
    except ImportError:  # the stand-in source imports tensorflow after the payload
        pass
    assert marker.exists()


# ----------------------------------------------------------------------------------------------------------
# The zoo checkpoint writer

@pytest.mark.parametrize("legacy", [False, True])
def test_zoo_checkpoint_is_a_real_foreign_global(tmp_path, legacy):
    ckpt = nfiles.zoo_checkpoint(8, [16, 8], 12, alpha=0.25, seed=0)
    path = nfiles.write_zoo_checkpoint(tmp_path / "zoo.pth", ckpt, legacy_format=legacy)
    data = path.read_bytes()
    assert b"models.utils.config" in data and b"BaseConfig" in data
    assert data[:2] == (b"\x80\x02" if legacy else b"PK")
    assert not any(k == "models" or k.startswith("models.") for k in sys.modules)
    with pytest.raises(pickle.UnpicklingError, match="BaseConfig"):
        torch.load(path, weights_only=True)
    with torch.serialization.safe_globals([nfiles.BaseConfig]):
        loaded = torch.load(path, weights_only=True)
    cfg = loaded["config"]
    assert (cfg.depthScale0, cfg.depthOtherScales, cfg.alpha, cfg.latentVectorDim, cfg.lossCriterion) == (
        16, [8], 0.25, 12, "WGANGP")
    assert list(loaded) == ["config", "netG", "netD", "avgG"]
    for key in ("netG", "netD", "avgG"):
        assert list(loaded[key]) == list(ckpt[key])
        assert all(torch.equal(loaded[key][k], ckpt[key][k]) for k in ckpt[key])
    assert list(loaded["netG"])[:2] == ["scaleLayers.0.0.module.weight", "scaleLayers.0.0.module.bias"]
    assert loaded["netG"]["formatLayer.module.bias"].shape == (256,)  # one per channel and position
    assert loaded["netD"]["groupScaleZero.0.module.weight"].shape == (16, 17, 3, 3)  # + the mbstd map
