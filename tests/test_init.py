"""`progan train --init NETWORK`: a new run that fine-tunes a grown network. It takes the file's G, D and G_ema
and its shape, starts where its schedule reaches the network's resolution (stable phase, Adam fresh), and keeps
a record of where the weights came from; anything that cannot be fine-tuned is refused in one line.

The published-network files (official pickles, the zoo's checkpoints) are tested in test_formats_*.py; here
the network is a real run of our own and its export."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY, one_error_line, photo_pyramid
from progan_cli.checkpoints import load_checkpoint
from progan_cli.cli.app import app

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
# Phases of 32 + 32 images, 4 minibatches of 8 per schedule update: 8x8 is fully in at 64 images.
SCHEDULE = ["--stable-kimg", "0.032", "--fade-kimg", "0.032", "--minibatch", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A finished 8x8 run (96 images) on the fixture photos, its export, and a 16x16 pyramid to fine-tune on."""
    tmp = tmp_path_factory.mktemp("init")
    data = photo_pyramid(tmp / "photos.h5", 8)
    result = runner.invoke(app, ["train", str(data), "--target", "8", *TINY, *SCHEDULE, "--out", str(tmp / "base")])
    assert result.exit_code == 0, result.output
    export = tmp / "base.safetensors"
    assert runner.invoke(app, ["export", str(tmp / "base"), "--out", str(export)]).exit_code == 0
    return {"data": data, "run": tmp / "base", "export": export, "small": photo_pyramid(tmp / "small.h5", 4),
            "tmp": tmp}


def test_init_starts_from_the_networks_at_the_stable_phase(grown, tmp_path):
    base = load_checkpoint(grown["run"])
    # lr and EMA that barely move: after 64 images every network must still be the file's.
    result = runner.invoke(app, ["train", str(grown["data"]), "--init", str(grown["run"]), *SCHEDULE,
                                 "--device", "cpu", "--workers", "0", "--total-kimg", "0.128", "--lr", "1e-9",
                                 "--ema-kimg", "1e9", "--ema-rampup", "0", "--out", str(tmp_path / "tuned")])
    assert result.exit_code == 0, result.output
    assert "from kimg 0.064" in result.stderr and "progan checkpoint" in result.stderr
    tuned = load_checkpoint(tmp_path / "tuned")
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["init"] == base["path"] and config["target"] == 8  # the very file it started from
    assert {k: config[k] for k in ("fmap_base", "fmap_max", "latent_size")} == {"fmap_base": 128, "fmap_max": 64,
                                                                                   "latent_size": 32}
    assert tuned["progress"]["cur_nimg"] == 128  # started at 64 (8x8 fully in), trained 64 images
    log = [json.loads(line) for line in (tmp_path / "tuned" / "log.jsonl").read_text().splitlines()]
    assert log[0]["kimg"] > 0.064 and {line["res"] for line in log} == {8} and {line["alpha"] for line in log} == {1.0}
    for name in ("G", "D", "G_ema"):
        for key, value in base[name].items():
            assert (tuned[name][key] - value).abs().max() < 1e-5, (name, key)
    # Adam started afresh: its step count is this run's 2 updates x 4 minibatches, not the base run's.
    steps = {int(s["step"]) for s in tuned["opt_G"]["state"].values()}
    assert steps == {8}
    assert tuned["provenance"]["origin"] == "progan run tuned, fine-tuned from progan run base"


def test_init_from_an_export_starts_d_afresh_and_trains(grown, tmp_path):
    result = runner.invoke(app, ["train", str(grown["data"]), "--init", str(grown["export"]), *SCHEDULE,
                                 "--device", "cpu", "--workers", "0", "--total-kimg", "0.096",
                                 "--out", str(tmp_path / "tuned")])
    assert result.exit_code == 0, result.output
    assert "holds a generator only: D starts from random weights" in result.stderr
    tuned = load_checkpoint(tmp_path / "tuned")
    exported = load_checkpoint(grown["run"])["G_ema"]
    assert tuned["progress"]["cur_nimg"] == 96
    assert max((tuned["G"][k] - v).abs().max() for k, v in exported.items()) < 0.05  # 32 images of lr 0.001
    assert all(torch.isfinite(v).all() for v in tuned["D"].values())
    # The run's own export says where its weights came from.
    out = tmp_path / "tuned.safetensors"
    assert runner.invoke(app, ["export", str(tmp_path / "tuned"), "--out", str(out)]).exit_code == 0
    about = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert about["origin"] == "progan run tuned, fine-tuned from progan run base"


def test_init_refusals_are_one_line(grown, tmp_path):
    # (SCHEDULE keeps a run short should a refusal ever fail to happen)
    base = ["train", str(grown["data"]), *SCHEDULE, "--device", "cpu", "--workers", "0", "--out",
            str(tmp_path / "never")]
    cases = [
        (["--init", str(grown["run"]), "--target", "16"], 2, "--target 16: --init"),
        (["--init", str(grown["run"]), "--latent-size", "64"], 2, "latent_size 32; leave it out"),
        (["--init", str(grown["run"]), "--total-kimg", "0.05"], 2, "a fine-tuning run starts at kimg 0.064"),
        (["--init", str(grown["run"]), "--resume", str(grown["run"])], 2, "--init and --resume exclude each other"),
        (["--init", str(grown["tmp"] / "absent.pkl")], 1, "absent.pkl: no such run folder or checkpoint file"),
    ]
    for extra, code, needle in cases:
        line = one_error_line(runner.invoke(app, [*base, *extra]), code)
        assert needle in line, (extra, line)
    small = ["train", str(grown["small"]), "--init", str(grown["run"]), *SCHEDULE, "--device", "cpu",
             "--out", str(tmp_path / "n")]
    assert "holds 4x4 images; prep the photos again with --target 8" in one_error_line(runner.invoke(app, small), 2)
    # A run stopped mid-fade (8x8 at alpha 0.5 after 48 images: 3 updates of 4 x 4) is not a grown network.
    half = ["train", str(grown["data"]), "--target", "8", *TINY, *SCHEDULE, "--minibatch", "4", "--total-kimg",
            "0.048", "--out", str(tmp_path / "half")]
    assert runner.invoke(app, half).exit_code == 0
    line = one_error_line(runner.invoke(app, [*base, "--init", str(tmp_path / "half")]), 2)
    assert "it has grown to 8x8 at alpha 0.500, not fully to 8x8" in line
    assert not (tmp_path / "never").exists() and not (tmp_path / "n").exists()
