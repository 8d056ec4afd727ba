"""NVIDIA's official ProGAN pickles, built here in their real format (the tuple (G, D, Gs) of `tfutil.Network`
states, numpy 1.x module names, protocols 2 to 4), load into progan's networks and compute what the official
networks compute: G(z) and D(x) against an independent numpy forward of the official formulas
(tests/reference/official_numpy.py, written from networks.py's semantics, not from progan's modules), for fused
and non-fused networks at three resolutions. Nothing from the file runs: any global outside the allow-list is
refused in one line before anything is built, and `build_module_src` is never executed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import one_error_line, photo_pyramid
from progan_cli.cli.app import app
from progan_cli.errors import CheckpointError
from progan_cli.formats import load_networks
from progan_cli.sampling import load_generator
from reference.network_files import (evil_pickle, official_pickle_with_malicious_src, official_variables,
                                     write_official_pickle)
from reference.official_numpy import official_D, official_G, official_uint8

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
ARCH = dict(fmap_base=128, fmap_max=64, latent_size=32)  # widths 64, 32, 16, 8 at 4, 8, 16, 32


def official_file(path, resolution, fused, *, protocol=4, mbstd_group=None, lod=0.0, seed=0):
    """A synthetic official pickle and its (G, D, Gs) variable lists."""
    G = official_variables("G", resolution, fused=fused, lod=lod, seed=seed, **ARCH)
    D = official_variables("D", resolution, fused=fused, lod=lod, seed=seed + 1, fmap_base=ARCH["fmap_base"],
                           fmap_max=ARCH["fmap_max"], latent_size=ARCH["latent_size"])
    Gs = official_variables("G", resolution, fused=fused, lod=lod, seed=seed + 2, **ARCH)
    kwargs = {"D": {"mbstd_group_size": mbstd_group}} if mbstd_group else None
    write_official_pickle(path, G, D, Gs, protocol=protocol, static_kwargs=kwargs)
    return dict(G), dict(D), dict(Gs)


@pytest.mark.parametrize("resolution", [8, 16, 32])
@pytest.mark.parametrize("fused", [True, False])
def test_g_and_d_compute_the_official_functions(tmp_path, resolution, fused):
    path = tmp_path / "official.pkl"
    G_vars, D_vars, Gs_vars = official_file(path, resolution, fused)
    nets = load_networks(path)
    assert (nets.config.target, nets.grown_to, nets.alpha, nets.kind) == (resolution, resolution, 1.0,
                                                                          "NVIDIA official ProGAN pickle")
    assert nets.config.d_fused is fused and nets.licence == "CC BY-NC 4.0"
    z = np.random.default_rng(1).standard_normal((5, ARCH["latent_size"])).astype(np.float32)
    for name, variables in (("G_ema", Gs_vars), ("G", G_vars)):
        ours = nets.build(name)(torch.from_numpy(z), resolution).double().numpy()
        np.testing.assert_allclose(ours, official_G(variables, z), rtol=1e-4, atol=1e-5, err_msg=name)
    images = np.random.default_rng(2).uniform(-1, 1, (8, 3, resolution, resolution)).astype(np.float32)
    ours = nets.build("D")(torch.from_numpy(images)).double().numpy()
    np.testing.assert_allclose(ours, official_D(D_vars, images)[:, 0], rtol=1e-4, atol=1e-5)


def test_render_gives_the_official_uint8_images(tmp_path):
    path = tmp_path / "official.pkl"
    _, _, Gs_vars = official_file(path, 16, fused=False)
    gen = load_generator(path)
    from progan_cli.networks.latents import latents

    z = latents(0, range(6), ARCH["latent_size"]).numpy()
    expected = official_uint8(official_G(Gs_vars, z))
    got = gen.sample(6).numpy()
    # Rounding may differ where the official float output lies within float error of a .5 boundary.
    assert (got != expected).mean() < 1e-3 and np.abs(got.astype(int) - expected).max() <= 1


def test_the_fused_kernel_is_flipped_and_the_plain_one_is_not(tmp_path):
    """A fused network whose Conv0_up kernels are the non-fused Conv0 kernels, flipped and transposed, is the same
    function: so progan must flip one and not the other (reading both the same way breaks one of them)."""
    fused = dict(official_variables("G", 16, fused=True, seed=3, **ARCH))
    plain = dict(fused)
    for res in (8, 16):
        w = plain.pop(f"{res}x{res}/Conv0_up/weight")  # [k, k, out, in]
        plain[f"{res}x{res}/Conv0/weight"] = w[::-1, ::-1].transpose(0, 1, 3, 2).copy()  # [k, k, in, out]
        plain[f"{res}x{res}/Conv0/bias"] = plain.pop(f"{res}x{res}/Conv0_up/bias")
    z = np.random.default_rng(4).standard_normal((3, ARCH["latent_size"])).astype(np.float32)
    np.testing.assert_allclose(official_G(fused, z), official_G(plain, z), rtol=1e-5, atol=1e-6)
    outputs = []
    for name, variables in (("fused", fused), ("plain", plain)):
        write_official_pickle(tmp_path / f"{name}.pkl", None, None, list(variables.items()))
        outputs.append(load_generator(tmp_path / f"{name}.pkl").net(torch.from_numpy(z), 16))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_every_protocol_and_the_file_s_mbstd_group(tmp_path, protocol):
    path = tmp_path / "official.pkl"
    _, D_vars, _ = official_file(path, 8, fused=False, protocol=protocol, mbstd_group=16)
    assert b"numpy.core.multiarray" in path.read_bytes() and b"numpy._core" not in path.read_bytes()
    nets = load_networks(path)
    assert nets.config.mbstd_group_size == 16
    images = np.random.default_rng(5).uniform(-1, 1, (32, 3, 8, 8)).astype(np.float32)
    ours = nets.build("D")(torch.from_numpy(images)).double().numpy()
    np.testing.assert_allclose(ours, official_D(D_vars, images, mbstd_group_size=16)[:, 0], rtol=1e-4, atol=1e-5)


def test_a_network_mid_fade_renders_its_lod(tmp_path):
    """A snapshot at lod 0.5 (32x32 fading in): progan renders 32x32 at alpha 0.5, the official output."""
    path = tmp_path / "official.pkl"
    _, _, Gs_vars = official_file(path, 32, fused=True, lod=0.5)
    gen = load_generator(path)
    assert (gen.about.grown_to, gen.about.alpha, gen.res) == (32, 0.5, 16)
    z = np.random.default_rng(6).standard_normal((2, ARCH["latent_size"])).astype(np.float32)
    ours = gen.net(torch.from_numpy(z), 32, gen.alpha(32)).double().numpy()
    np.testing.assert_allclose(ours, official_G(Gs_vars, z), rtol=1e-4, atol=1e-5)


def test_labels_and_foreign_globals_are_refused_in_one_line(tmp_path):
    G = official_variables("G", 8, label_size=2, fused=True, **ARCH)
    D = official_variables("D", 8, label_size=2, fused=True, fmap_base=128, fmap_max=64, latent_size=32)
    write_official_pickle(tmp_path / "labels.pkl", G, D, G)
    with pytest.raises(CheckpointError, match="a conditional network \\(2 labels\\)"):
        load_networks(tmp_path / "labels.pkl")
    marker = tmp_path / "pwned"
    evil_pickle(tmp_path / "evil.pkl", marker)
    line = one_error_line(runner.invoke(app, ["sample", str(tmp_path / "evil.pkl"), "--n", "1", "--out",
                                              str(tmp_path / "s")]))
    assert "not a readable official ProGAN pickle: it asks for" in line and "which could run code" in line
    assert not marker.exists() and not (tmp_path / "s").exists()
    # A well-formed pickle whose networks.py source would create a file if exec()'d, as the official loader does.
    src_marker = tmp_path / "exec-ran"
    official_pickle_with_malicious_src(tmp_path / "src.pkl", src_marker, resolution=8, **ARCH)
    assert load_networks(tmp_path / "src.pkl").config.target == 8
    assert not src_marker.exists()


def test_every_command_that_takes_a_generator_takes_a_pickle(tmp_path, private_cache):
    path = tmp_path / "official.pkl"
    official_file(path, 16, fused=False)  # 16x16: the smallest MS-SSIM and SWD take
    data = photo_pyramid(tmp_path / "photos.h5", 16)

    def ok(*args):
        result = runner.invoke(app, [*args])
        assert result.exit_code == 0, (args, result.output)
        return result.stdout

    ok("sample", str(path), "--n", "4", "--out", str(tmp_path / "s"), "--device", "cpu")
    assert len(list((tmp_path / "s").glob("*.png"))) == 4
    ok("interpolate", str(path), "--frames", "2", "--out", str(tmp_path / "walk.gif"), "--device", "cpu")
    export = tmp_path / "G.safetensors"
    ok("export", str(path), "--out", str(export))
    about = json.loads(ok("info", str(export), "--json"))
    assert (about["licence"], about["origin"]) == ("CC BY-NC 4.0", "NVIDIA's official ProGAN, official.pkl")
    assert about["kind"] == "progan export" and about["kimg"] is None
    assert torch.equal(load_generator(export).sample(4), load_generator(path).sample(4))
    assert "licence: CC BY-NC 4.0" in ok("info", str(path))
    swd = json.loads(ok("swd", str(data), str(path), "--n", "8", "--json", "--device", "cpu"))
    assert np.isfinite(swd["mean"]) and list(swd["levels"]) == ["16"]
    ms = json.loads(ok("msssim", str(path), "--n", "8", "--json", "--device", "cpu"))
    assert np.isfinite(ms["msssim"])
    fid = json.loads(ok("fid", str(data), str(path), "--n", "8", "--json", "--device", "cpu"))
    assert np.isfinite(fid["fid"]) and fid["fid"] > 0
