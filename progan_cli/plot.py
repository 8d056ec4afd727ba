"""Training curves over kimg from runs' `log.jsonl`: losses, D's scores, the gradient penalty, images/s and the
metrics, with the resolution phases shaded and the fades marked (`progan plot RUN [RUN2 ...]`).

Reading the logs needs nothing beyond the standard library (`--json` prints the series); drawing needs
matplotlib, the optional `plot` extra. The figure is built on a bare `matplotlib.figure.Figure` (no pyplot,
no GUI backend), so it renders the same on a headless server.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from progan_cli.errors import DataError, UsageError
from progan_cli.files import atomic_write

# Panels of the figure and the log fields each one draws (those a run's loss does not log are left out).
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss_D", "loss_G")),
    ("D score", ("score_real", "score_fake", "score_fake_G")),
    ("gradient penalty", ("gp", "grad_norm", "drift")),
    ("images/s", ("img_per_s",)),
)
# Log fields that describe the schedule or the clock, not the run's progress: never a curve here.
SCHEDULE_FIELDS = frozenset({"res", "lod", "alpha", "minibatch", "lr"})
CLOCK_FIELDS = frozenset({"sec_per_kimg", "sec_per_tick", "total_sec", "mem_gb"})
NOT_CURVES = SCHEDULE_FIELDS | CLOCK_FIELDS | {"tick", "kimg", "phase"}
_PANEL_OF = {field: title for title, fields in PANELS for field in fields}
FORMATS = (".png", ".svg", ".pdf")


@dataclass
class RunCurves:
    """One run's curves: field -> (kimg, values), and its schedule's phases (from config.json)."""

    name: str
    path: str
    series: dict[str, tuple[list[float], list[float]]]
    phases: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "phases": self.phases,
                "series": {k: {"kimg": x, "value": y} for k, (x, y) in self.series.items()}}


def read_run(path: Path) -> RunCurves:
    """The curves of a run folder (or its log.jsonl). Every numeric field of the log lines but the schedule's
    and the clock's becomes a series, metrics included, wherever they were logged.

    A last line without its newline is a tick being written right now and is left out; any other line that
    is not JSON is a DataError naming the file and line.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    log = folder / "log.jsonl"
    if not log.is_file():
        raise DataError(f"{path}: no log.jsonl there (is it a `progan train` run folder?)")
    text = log.read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # the tick being appended now
    series: dict[str, tuple[list[float], list[float]]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            kimg = float(record["kimg"])
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{log}:{number}: not a progan log line") from None
        for key, value in record.items():
            if key in NOT_CURVES or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(kimg)
            ys.append(float(value))
    if not series:
        raise DataError(f"{log} holds no ticks yet; plot it after the first tick")
    return RunCurves(name=folder.resolve().name, path=str(folder), series=series, phases=_phases(folder))


def _phases(folder: Path) -> list[dict[str, Any]]:
    """The schedule's phases from the run's config.json ([] without one: nothing to shade)."""
    from progan_cli.config import TrainConfig
    from progan_cli.schedule import phase_spans

    config = folder / "config.json"
    if not config.is_file():
        return []
    return [asdict(span) for span in phase_spans(TrainConfig.load(config))]


def read_runs(paths: list[Path]) -> list[RunCurves]:
    """Several runs; two with the same folder name are labelled by their whole path instead."""
    if not paths:
        raise UsageError("give at least one run folder")
    runs = [read_run(p) for p in paths]
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = run.path
    return runs


def check_figure(out: Path) -> Path:
    """The figure's path, its suffix choosing the format, and matplotlib importable: a UsageError before any
    work otherwise."""
    from progan_cli.extras import require

    require("matplotlib", "plot", "progan plot")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'curves.png'}")
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"--out {out}: the suffix picks the format; use {', '.join(FORMATS)}")
    return out


def field_group(field: str) -> str:
    """The group a log field belongs to: its panel's title, "schedule", "clock" or "metrics" (anything else
    numeric: fid10k, swd, swd/16, ...)."""
    if field in _PANEL_OF:
        return _PANEL_OF[field]
    return "schedule" if field in SCHEDULE_FIELDS else "clock" if field in CLOCK_FIELDS else "metrics"


def metric_panels(runs: list[RunCurves]) -> list[tuple[str, tuple[str, ...]]]:
    """One panel per metric logged by any run, named by the metric (fid10k, swd, ...); fields that extend a
    name after "_" share its panel (pr10k_precision and pr10k_recall; fid1000 and fid1000_paper_ema).
    Per-level SWD (swd/16) and the spreads (_std) stay in the JSON only."""
    panels: dict[str, list[str]] = {}
    for field in sorted({k for r in runs for k in r.series}):
        if field_group(field) == "metrics" and "/" not in field and not field.endswith("_std"):
            panels.setdefault(field.split("_")[0], []).append(field)
    return [(name, tuple(fields)) for name, fields in sorted(panels.items())]


def render(runs: list[RunCurves], out: Path) -> Path:
    """Draw the runs' curves into `out` (PNG, SVG or PDF by its suffix), atomically.

    One panel per kind of curve, kimg shared along the bottom. With one run each field has its own colour;
    with several, each run has a colour and each field a line style. The first run's phases are shaded
    (alternate resolutions in two greys, fades hatched, each resolution labelled where it starts).
    """
    from matplotlib.figure import Figure

    panels = [(title, fields) for title, fields in PANELS if any(f in r.series for r in runs for f in fields)]
    panels += metric_panels(runs)
    fig = Figure(figsize=(10, 2.1 * len(panels) + 0.8), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    end = max(max(xs) for r in runs for xs, _ in r.series.values())
    colours = [f"C{i}" for i in range(10)]
    styles = ("-", "--", ":", "-.")
    for ax, (title, fields) in zip(axes, panels):
        _shade(ax, runs[0].phases, end, label=ax is axes[0])
        present = [f for f in fields if any(f in r.series for r in runs)]
        drawn = [(r, f) for r in runs for f in present if f in r.series]
        for run, field in drawn:
            xs, ys = run.series[field]
            sparse = len(xs) < 0.5 * max(len(x) for x, _ in run.series.values())  # metrics: a few ticks
            if len(runs) == 1:
                colour, style, label = colours[present.index(field) % 10], "-", field
            else:
                colour = colours[runs.index(run) % 10]
                style = styles[present.index(field) % len(styles)]
                label = f"{run.name}: {field}" if len(present) > 1 else run.name
            ax.plot(xs, ys, style, color=colour, label=label, linewidth=1.2, marker="o" if sparse else None,
                    markersize=3)
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        if len(runs) > 1:  # one entry per run and field: beside the panel, not over the curves
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        elif drawn:
            ax.legend(loc="best", fontsize="small", framealpha=0.8)
    axes[-1].set_xlabel("kimg (thousands of real images shown)")
    start = min(r.phases[0]["start_kimg"] if r.phases else 0.0 for r in runs)  # a fine-tuning run starts late
    axes[-1].set_xlim(start, end)
    names = ", ".join(r.name for r in runs)
    fig.suptitle(f"{names}" + (f"  (phases of {runs[0].name})" if len(runs) > 1 and runs[0].phases else ""))
    with atomic_write(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lower()[1:], dpi=110)
    return out


def _shade(ax: Any, phases: list[dict[str, Any]], end: float, label: bool) -> None:
    """Grey bands for each resolution's stable phase, hatched bands for its fade-in, a dotted line where a
    fade starts; the resolution written above the top panel."""
    labelled = -math.inf
    for span in (p for p in phases if p["start_kimg"] < end):
        stop = min(span["end_kimg"], end)
        level = int(math.log2(span["res"]))
        if span["phase"] == "fade":
            ax.axvspan(span["start_kimg"], stop, facecolor="none", edgecolor="0.75", hatch="//", linewidth=0)
            ax.axvline(span["start_kimg"], color="0.4", linestyle=":", linewidth=0.8)
        else:
            ax.axvspan(span["start_kimg"], stop, color="0.88" if level % 2 else "0.95", linewidth=0)
        if label and (span["phase"] == "fade" or span["res"] == 4) and span["start_kimg"] - labelled > 0.06 * end:
            labelled = span["start_kimg"]
            ax.text(span["start_kimg"], 1.01, f"{span['res']}x{span['res']}", transform=ax.get_xaxis_transform(),
                    fontsize="small", color="0.3", va="bottom")
