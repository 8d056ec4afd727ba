"""`progan train --tensorboard`: event files beside log.jsonl hold every tick's scalars (read back with
TensorBoard's own EventAccumulator and compared with the log lines); a crashed session's extra ticks are
purged on resume; without the package the option fails in one line naming the extra."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY, photo_pyramid
from progan_cli.cli.app import app
from progan_cli.tensorboard_log import tag

pytestmark = pytest.mark.usefixtures("one_thread")
SCHEDULE = ["--target", "8", *TINY, "--stable-kimg", "0.064", "--fade-kimg", "0.064", "--minibatch", "16",
            "--tick-kimg", "0.064", "--snapshot-ticks", "1", "--tensorboard"]


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tags_group_fields_like_the_plot_panels():
    assert tag("loss_D") == "loss/loss_D"
    assert tag("score_fake_G") == "D_score/score_fake_G"
    assert tag("gp") == "gradient_penalty/gp"
    assert tag("img_per_s") == "images_per_s/img_per_s"
    assert tag("lod") == "schedule/lod"
    assert tag("mem_gb") == "clock/mem_gb"
    assert tag("fid10k") == "metrics/fid10k" and tag("swd/16") == "metrics/swd/16"


@pytest.mark.slow
def test_event_files_hold_every_tick_and_a_resume_purges_the_lost_ticks(tmp_path):
    pytest.importorskip("tensorboard")
    data = photo_pyramid(tmp_path / "p.h5", 8)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(data), *SCHEDULE, "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert list(run.glob("events.out.tfevents.*"))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    scalars = _scalars(run)
    for field in ("loss_D", "loss_G", "gp", "score_real", "img_per_s", "alpha", "lod"):
        assert [s for s, _ in scalars[tag(field)]] == [round(ln["kimg"] * 1000) for ln in log]
        assert [v for _, v in scalars[tag(field)]] == pytest.approx([ln[field] for ln in log], rel=1e-6)
    assert [s for s, _ in scalars["schedule/res"]] == [64, 128, 192]
    # a tick's line shows its last schedule update (64 images before): at 64 images the fade's alpha is 1
    assert [v for _, v in scalars["schedule/res"]] == [4, 4, 8]

    # A session that crashed after tick 3 but whose last checkpoint is tick 2: resuming replays tick 3, and
    # TensorBoard must show it once, as log.jsonl does.
    (run / "checkpoints" / "ckpt-000000.192.pt").unlink()
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--tensorboard", *TINY[-4:]])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    scalars = _scalars(run)
    assert [s for s, _ in scalars["loss/loss_D"]] == [64, 128, 192] == [round(ln["kimg"] * 1000) for ln in log]
    assert [v for _, v in scalars["loss/loss_D"]] == pytest.approx([ln["loss_D"] for ln in log], rel=1e-6)


def test_without_tensorboard_one_line_names_the_extra(tmp_path, monkeypatch):
    data = photo_pyramid(tmp_path / "p.h5", 8)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = CliRunner().invoke(app, ["train", str(data), *SCHEDULE, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: progan train --tensorboard needs the optional 'tensorboard' extra: "
                                     'pip install "progan[tensorboard]"')
    assert not (tmp_path / "run").exists()
