"""pytorch_GAN_zoo's PGAN checkpoints, built here in their real format (torch.save of {config: the zoo's BaseConfig,
netG, netD, avgG}, zip and legacy serialisation), load into progan's networks with the zoo's scalings folded into
the weights, and compute what the zoo's networks compute: G(z) and D(x) against a numpy forward of the zoo's
formulas (tests/reference/zoo_numpy.py), finished and mid-fade, with and without minibatch stddev and equalized
learning rate. The commands and `train --init` take them like any generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import one_error_line, photo_pyramid
from progan_cli.checkpoints import load_checkpoint
from progan_cli.cli.app import app
from progan_cli.errors import CheckpointError
from progan_cli.formats import load_networks
from progan_cli.sampling import load_generator
from reference.network_files import write_zoo_checkpoint, zoo_checkpoint
from reference.zoo_numpy import zoo_D, zoo_G

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
DEPTHS = [64, 64, 32, 16]  # 4, 8, 16, 32: nf with fmap_base 256, fmap_max 64


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("alpha, mbstd, equalized", [(0.0, True, True), (0.25, True, True), (0.0, False, False)])
def test_g_and_d_compute_the_zoo_functions(tmp_path, legacy, alpha, mbstd, equalized):
    ckpt = zoo_checkpoint(32, DEPTHS, 24, alpha=alpha, mbstd=mbstd, equalized=equalized, seed=3)
    path = write_zoo_checkpoint(tmp_path / "zoo.pth", ckpt, legacy_format=legacy)
    nets = load_networks(path)
    cfg = nets.config
    assert (cfg.target, cfg.latent_size, cfg.fmap_base, cfg.fmap_max) == (32, 24, 256, 64)
    assert (cfg.stem_bias, cfg.mbstd_variant, cfg.d_fused, cfg.mbstd_group_size) == (
        "position", "gan-zoo", False, 4 if mbstd else 1)
    assert (nets.grown_to, nets.alpha, nets.kind) == (32, 1.0 - alpha, "pytorch_GAN_zoo PGAN checkpoint")
    z = np.random.default_rng(1).standard_normal((5, 24)).astype(np.float32)
    for name, key in (("G_ema", "avgG"), ("G", "netG")):
        ours = nets.build(name)(torch.from_numpy(z), 32, nets.alpha).double().numpy()
        np.testing.assert_allclose(ours, zoo_G(ckpt[key], ckpt["config"], z), rtol=1e-4, atol=1e-5, err_msg=name)
    images = np.random.default_rng(2).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    ours = nets.build("D")(torch.from_numpy(images), nets.alpha).double().numpy()
    np.testing.assert_allclose(ours, zoo_D(ckpt["netD"], ckpt["config"], images)[:, 0], rtol=1e-4, atol=1e-5)


def test_conditional_and_tanh_networks_are_refused(tmp_path):
    ckpt = zoo_checkpoint(8, DEPTHS[:2], 24, seed=0)
    ckpt["config"].categoryVectorDim = 3
    with pytest.raises(CheckpointError, match="a conditional \\(AC-GAN\\) network"):
        load_networks(write_zoo_checkpoint(tmp_path / "cond.pth", ckpt))
    ckpt = zoo_checkpoint(8, DEPTHS[:2], 24, seed=0)
    ckpt["config"].lossCriterion = "DCGAN"
    with pytest.raises(CheckpointError, match="ends in tanh"):
        load_networks(write_zoo_checkpoint(tmp_path / "dcgan.pth", ckpt))


def test_commands_and_init_take_a_zoo_checkpoint(tmp_path, private_cache):
    ckpt = zoo_checkpoint(16, DEPTHS[:3], 24, seed=5)
    path = write_zoo_checkpoint(tmp_path / "celebaHQ_s2_i1000-00000000.pth", ckpt)

    def ok(*args):
        result = runner.invoke(app, [*args])
        assert result.exit_code == 0, (args, result.output)
        return result

    ok("sample", str(path), "--n", "3", "--grid", str(tmp_path / "g.png"), "--device", "cpu")
    export = tmp_path / "zoo.safetensors"
    ok("export", str(path), "--out", str(export))
    about = json.loads(ok("info", str(export), "--json").stdout)
    assert (about["licence"], about["stem_bias"], about["kind"]) == ("BSD-3-Clause", "position", "progan export")
    assert torch.equal(load_generator(export).sample(3), load_generator(path).sample(3))
    data = photo_pyramid(tmp_path / "photos.h5", 16)
    swd = json.loads(ok("swd", str(data), str(path), "--n", "8", "--json", "--device", "cpu").stdout)
    assert np.isfinite(swd["mean"]) and list(swd["levels"]) == ["16"]
    # Fine-tuning: the zoo's G, D and avgG, its variants kept, the run starting where 16x16 is fully in.
    run = tmp_path / "tuned"
    result = ok("train", str(data), "--init", str(path), "--stable-kimg", "0.032", "--fade-kimg", "0.032",
                "--minibatch", "8", "--total-kimg", "0.16", "--lr", "1e-9", "--ema-kimg", "1e9", "--ema-rampup", "0",
                "--device", "cpu", "--workers", "0", "--threads", "1", "--out", str(run))
    assert "from kimg 0.128" in result.stderr
    tuned, start = load_checkpoint(run), load_networks(path)
    assert tuned["progress"]["cur_nimg"] == 160
    assert (tuned["config"]["stem_bias"], tuned["config"]["d_fused"]) == ("position", False)
    for name in ("G", "D", "G_ema"):
        for key, value in start.weights[name].items():
            assert (tuned[name][key] - value).abs().max() < 1e-5, (name, key)
    assert tuned["provenance"] == {"origin": f"progan run tuned, fine-tuned from pytorch_GAN_zoo PGAN, {path.name}",
                                   "licence": "BSD-3-Clause"}


def test_a_damaged_zoo_checkpoint_is_one_line(tmp_path):
    ckpt = zoo_checkpoint(8, DEPTHS[:2], 24, seed=0)
    del ckpt["netG"]["toRGBLayers.1.module.weight"]
    path = write_zoo_checkpoint(tmp_path / "damaged.pth", ckpt)
    line = one_error_line(runner.invoke(app, ["sample", str(path), "--n", "1", "--out", str(tmp_path / "s")]))
    assert "toRGBLayers.1.module.weight is not a 4-d float array" in line


def test_an_8x8_zoo_network_mid_fade_has_no_d_progan_computes(tmp_path):
    """The zoo's D blends only once two scales sit above 4x4, while its G blends at 8x8 too: mid-fade at 8x8 the
    G loads (and renders the zoo's image) and the D, a function progan's D is not, is left out."""
    ckpt = zoo_checkpoint(8, DEPTHS[:2], 24, alpha=0.5, seed=7)
    nets = load_networks(write_zoo_checkpoint(tmp_path / "early.pth", ckpt))
    assert sorted(nets.weights) == ["G", "G_ema"] and (nets.grown_to, nets.alpha) == (8, 0.5)
    z = np.random.default_rng(8).standard_normal((3, 24)).astype(np.float32)
    ours = nets.build("G_ema")(torch.from_numpy(z), 8, 0.5).double().numpy()
    np.testing.assert_allclose(ours, zoo_G(ckpt["avgG"], ckpt["config"], z), rtol=1e-4, atol=1e-5)


def test_download_then_sample_a_zoo_checkpoint_from_a_local_server(tmp_path, monkeypatch):
    """The whole way a user takes: `progan download` over HTTP (a server on 127.0.0.1 serving a zoo checkpoint
    written here), its sha256 checked, then `progan info` and `progan sample` on the path it printed."""
    import functools
    import hashlib
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = tmp_path / "served"
    served.mkdir()
    path = write_zoo_checkpoint(served / "celebaHQ_s1_i10-00000000.pth", zoo_checkpoint(8, DEPTHS[:2], 24, seed=9))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setenv("PROGAN_CACHE", str(tmp_path / "cache"))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{path.name}"
        got = runner.invoke(app, ["download", url, "--sha256", digest])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert got.exit_code == 0, got.output
    cached = tmp_path / "cache" / "networks" / path.name
    assert got.stdout.strip() == str(cached) and cached.read_bytes() == path.read_bytes()
    assert "pytorch_GAN_zoo PGAN checkpoint, 8x8" in runner.invoke(app, ["info", str(cached)]).stdout
    out = runner.invoke(app, ["sample", str(cached), "--n", "2", "--out", str(tmp_path / "s.npz"), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    expected = load_generator(path).sample(2).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.load(tmp_path / "s.npz")["arr_0"], expected)
