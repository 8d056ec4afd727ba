"""`progan plot`: the schedule's phases against `schedule_at`, and real tiny runs drawn to PNG/SVG and printed
as JSON (checked against the log lines read directly); a missing matplotlib or bad input fails in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY, photo_pyramid
from progan_cli.cli.app import app
from progan_cli.config import TrainConfig
from progan_cli.schedule import PhaseSpan, phase_spans, schedule_at

pytestmark = pytest.mark.usefixtures("one_thread")


def test_phase_spans_by_hand_for_16_with_one_kimg_phases():
    spans = phase_spans(TrainConfig(data="x.h5", target=16, stable_kimg=1, fade_kimg=1))
    assert spans == [PhaseSpan(4, "stable", 0, 1), PhaseSpan(8, "fade", 1, 2), PhaseSpan(8, "stable", 2, 3),
                     PhaseSpan(16, "fade", 3, 4), PhaseSpan(16, "stable", 4, 5)]
    # a shorter --total-kimg cuts the schedule; a longer one lengthens the target's stable phase
    assert phase_spans(TrainConfig(data="x.h5", target=16, stable_kimg=1, fade_kimg=1, total_kimg=2.5))[-1] == \
        PhaseSpan(8, "stable", 2, 2.5)
    assert phase_spans(TrainConfig(data="x.h5", target=16, stable_kimg=1, fade_kimg=1, total_kimg=9))[-1] == \
        PhaseSpan(16, "stable", 4, 9)


@pytest.mark.parametrize("kw", [{"target": 128}, {"target": 32, "stable_kimg": 3, "fade_kimg": 5},
                                {"target": 4}, {"target": 64, "total_kimg": 2000}])
def test_phase_spans_agree_with_schedule_at_everywhere(kw):
    cfg = TrainConfig(data="x.h5", **kw)
    spans = phase_spans(cfg)
    assert spans[0].start_kimg == 0 and spans[-1].end_kimg == cfg.end_kimg
    assert all(a.end_kimg == b.start_kimg for a, b in zip(spans, spans[1:]))
    for span in spans:  # inside each span (at a fade's first image the formula still gives alpha 1)
        for f in (0.001, 0.5, 0.999):
            kimg = span.start_kimg + f * (span.end_kimg - span.start_kimg)
            s = schedule_at(round(kimg * 1000), cfg)
            assert (s.res, s.phase) == (span.res, span.phase), (kimg, span)


def _train(tmp: Path, name: str, target: int, extra: list[str]) -> Path:
    data = photo_pyramid(tmp / f"{name}.h5", target)
    run = tmp / name
    result = CliRunner().invoke(app, ["train", str(data), "--target", str(target), *TINY, "--stable-kimg", "0.064",
                                      "--fade-kimg", "0.064", "--minibatch", "16", "--tick-kimg", "0.064",
                                      "--out", str(run), *extra])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real tiny runs: 4 -> 16 with SWD at ticks 6 and 7 (16x16 stable), and 4 -> 8 with another seed."""
    tmp = tmp_path_factory.mktemp("plot")
    first = _train(tmp, "faces16", 16, ["--total-kimg", "0.448", "--metrics", "swd", "--metrics-ticks", "3"])
    second = _train(tmp, "faces8", 8, ["--seed", "1"])
    return first, second


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_json_series_are_the_log_lines_and_the_schedule(runs):
    first, _ = runs
    result = CliRunner().invoke(app, ["plot", str(first), "--json"])
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    log = _log(first)
    assert run["name"] == "faces16"
    assert run["series"]["loss_D"] == {"kimg": [ln["kimg"] for ln in log], "value": [ln["loss_D"] for ln in log]}
    assert run["series"]["img_per_s"]["value"] == [ln["img_per_s"] for ln in log]
    with_swd = [ln for ln in log if "swd" in ln]
    # metrics at ticks 3, 6 and 7 (the last); tick 3 ran at 8x8, below SWD's 16x16
    assert [ln["tick"] for ln in with_swd] == [6, 7]
    assert run["series"]["swd"] == {"kimg": [ln["kimg"] for ln in with_swd], "value": [ln["swd"] for ln in with_swd]}
    assert "res" not in run["series"] and "total_sec" not in run["series"]
    assert [(p["res"], p["phase"]) for p in run["phases"]] == [(4, "stable"), (8, "fade"), (8, "stable"),
                                                                 (16, "fade"), (16, "stable")]
    assert [p["end_kimg"] for p in run["phases"]] == pytest.approx([0.064, 0.128, 0.192, 0.256, 0.448])


@pytest.mark.slow
def test_png_of_one_run_has_a_panel_per_kind_of_curve(runs):
    pytest.importorskip("matplotlib")
    first, _ = runs
    result = CliRunner().invoke(app, ["plot", str(first)])
    assert result.exit_code == 0, result.output
    out = first / "curves.png"
    assert result.stdout.strip() == str(out)
    image = np.asarray(Image.open(out).convert("RGB"))
    # loss, D score, gradient penalty, images/s, swd: 5 panels of 2.1 in + 0.8 in at 110 dpi
    assert image.shape[:2] == (round((5 * 2.1 + 0.8) * 110), 1100)
    # the 8x8 stable phase is shaded grey (0.88 = 224), the 4x4 and 16x16 ones lighter (0.95 = 242)
    colours = {tuple(c) for c in image.reshape(-1, 3)[::7]}
    assert (224, 224, 224) in colours and (242, 242, 242) in colours


@pytest.mark.slow
def test_two_runs_overlaid_to_svg(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "both.svg"
    result = CliRunner().invoke(app, ["plot", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("<?xml") and "<svg" in text
    both = json.loads(CliRunner().invoke(app, ["plot", *map(str, runs), "--json"]).stdout)["runs"]
    assert [r["name"] for r in both] == ["faces16", "faces8"]
    last = both[1]["phases"][-1]
    assert (last["res"], last["phase"]) == (8, "stable")
    assert (last["start_kimg"], last["end_kimg"]) == pytest.approx((0.128, 0.192))


def test_without_matplotlib_one_line_names_the_extra_and_json_still_works(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"tick": 1, "kimg": 0.5, "loss_D": 1.0}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is absent
    result = CliRunner().invoke(app, ["plot", str(run)])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: progan plot needs the optional 'plot' extra: "
                                     'pip install "progan[plot]"')
    result = CliRunner().invoke(app, ["plot", str(run), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["runs"][0]["series"] == {"loss_D": {"kimg": [0.5], "value": [1.0]}}


def test_a_tick_being_written_is_left_out_but_a_broken_line_is_an_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    whole = json.dumps({"tick": 1, "kimg": 0.5, "loss_D": 1.0}) + "\n"
    (run / "log.jsonl").write_text(whole + '{"tick": 2, "kimg": 1.0, "los')
    result = CliRunner().invoke(app, ["plot", str(run / "log.jsonl"), "--json"])
    assert json.loads(result.stdout)["runs"][0]["series"]["loss_D"]["kimg"] == [0.5]
    (run / "log.jsonl").write_text(whole + "garbage\n" + whole)
    result = CliRunner().invoke(app, ["plot", str(run), "--json"])
    assert result.exit_code == 1 and result.output.strip() == f"Error: {run / 'log.jsonl'}:2: not a progan log line"


@pytest.mark.parametrize("args, needle", [
    (["{empty}"], "no log.jsonl there"),
    (["{run}", "--out", "{tmp}/x.jpg"], "the suffix picks the format; use .png, .svg, .pdf"),
    (["{run}", "--out", "{tmp}"], "is a folder"),
    (["{blank}", "--json"], "holds no ticks yet"),
])
def test_bad_input_fails_in_one_line(tmp_path, args, needle):
    pytest.importorskip("matplotlib")
    for name in ("empty", "run", "blank"):
        (tmp_path / name).mkdir()
    (tmp_path / "run" / "log.jsonl").write_text(json.dumps({"tick": 1, "kimg": 0.5, "loss_D": 1.0}) + "\n")
    (tmp_path / "blank" / "log.jsonl").write_text("")
    args = [a.format(tmp=tmp_path, run=tmp_path / "run", empty=tmp_path / "empty", blank=tmp_path / "blank")
            for a in args]
    result = CliRunner().invoke(app, ["plot", *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], \
        result.output


def test_metric_panels_group_a_name_and_its_extensions():
    from progan_cli.plot import RunCurves, metric_panels

    series = {k: ([1.0], [1.0]) for k in ("loss_D", "fid1000", "fid1000_paper_ema", "pr10k_precision",
                                          "pr10k_recall", "swd", "swd/16", "kid10k", "kid10k_std", "lod")}
    assert metric_panels([RunCurves("r", "r", series, [])]) == [
        ("fid1000", ("fid1000", "fid1000_paper_ema")), ("kid10k", ("kid10k",)),
        ("pr10k", ("pr10k_precision", "pr10k_recall")), ("swd", ("swd",))]


def test_a_fine_tuning_run_s_phases_begin_where_it_starts():
    # --init: the run starts where its schedule reaches the target (2 growths x 2 kimg = 4 kimg for 16x16)
    cfg = TrainConfig(data="x.h5", target=16, stable_kimg=1, fade_kimg=1, init="/nets/G.pkl")
    assert phase_spans(cfg) == [PhaseSpan(16, "stable", 4.0, 5.0)]
    assert phase_spans(cfg.replace(total_kimg=7.5)) == [PhaseSpan(16, "stable", 4.0, 7.5)]
