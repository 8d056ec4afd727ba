"""Evidence that training learns faces: FID and SWD of a reduced-width ProGAN on 32x32 CelebA, on the CPU.

From `../shared/data/celeba-half` (10,000 aligned CelebA photos, 89x109): the last 2,000 photos are held out
as the metric reals, the first 8,000 are the training set. Both go through `progan prep --crop center`'s own
function (`progan_cli.data.prep.run_prep` with the standard CelebA centre crop: cx=44.5, cy=60.5, 64x64 at
this size) to 32x32 pyramids. `training_loop` (what `progan train` runs) then trains 4x4 -> 32x32 with
reduced widths (fmap_base 256, fmap_max 64, latent 128; minibatch 32 everywhere; 30 kimg stable + 30 kimg
fade per resolution, 32x32 stable from 180 to 300 kimg), and every 40 kimg at 32x32 the run is scored
against the held-out reals with the in-training metrics callback (`progan train --metrics`'s):
    FID  n_fid generated images (1,000) against the 2,000 held-out reals, TTUR protocol, offline Inception
    SWD  n_swd generated images (2,000) against as many held-out reals, the paper's protocol, x1e3
beside two references: the untrained network (the run's own initial G, same seed) and real vs real (1,000
training images against the held-out ones for FID, 2,000 for SWD): the floor a perfect generator reaches.

G_ema, two ways, from one run. G's and D's trajectory never depends on G_ema, so a second run with
`--ema-decay 0.999` would repeat the same G step for step and differ only in G_ema. Instead the paper's
G_ema (fixed decay 0.999 per step) is kept beside the run's default one (half-life 10 kimg, ramp-up 0.05):
`train_step` is wrapped to apply `update_ema(G_ema_paper, G, 0.999)` right after each step, the same call
the loop makes with `--ema-decay 0.999`, starting from the same initial G; tests/test_quality_benchmark.py
checks that this equals a real `--ema-decay 0.999` run bit for bit.

Writes into OUT (default ./celeba_quality, ./celeba_quality_quick with --quick; refused when not empty):
train.h5, heldout.h5, train_part.h5, run/ (a normal run folder: config.json, log.jsonl with both G_ema's
scores, samples/, checkpoints/), fakes.png (final default G_ema), fakes_paper.png, reals.png (held-out),
curves.png (`progan plot` of the run, when matplotlib is installed), results.json; prints the markdown table
on stdout, progress on stderr.

    python3 benchmarks/celeba_quality.py                 # the full run: ~300 kimg
    python3 benchmarks/celeba_quality.py --quick         # same code path, tiny sizes: a smoke test

Costs measured on this 2-core CPU (one thread, CPU time per image of a training step at these widths,
minibatch 64: 0.8 ms at 4x4, 2.6 ms at 8x8, 5.6 ms at 16x16, 9.1 ms at 32x32; Inception pool3 150 ms): the
full schedule is ~2,100 CPU-seconds of training, i.e. about 30-35 minutes on a quiet machine (a second thread
gains little at these widths), and scoring (4 points x 2 G_ema x 1,000 images plus 3,000 reference images,
~11,000 through Inception) about 15-25 minutes more.
These were estimates from per-step CPU times taken at load ~12. The full run, timed on 2026-12-01 with
`--threads 1` at load 2-4 (tests and helpers sharing the cores): training 47.8 minutes, scoring 57.8 (the
scoring estimate above was low: Inception ran well under its idle speed beside the other jobs), 1 h 46 min
in all; its results are in docs/results.md. `--quick` (2 kimg, 32 generated images for FID, 128 for SWD) took 76 s wall
(training 0.3 min, scoring 0.8 min) with the default 2 threads at load ~1.5. At load ~6-7 it took 7.8 minutes
with 2 threads but 4.6 with `--threads 1`: on a busy machine two threads spin against each other (training
alone 3.9 vs 0.6 minutes), so pass `--threads 1` there.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import progan_cli.training.loop as loop  # noqa: E402
from progan_cli.files import atomic_write  # noqa: E402
from progan_cli.training.step import update_ema  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "celeba-half"
TARGET = 32
PAPER_DECAY = 0.999
# name: (training photos, held-out photos, FID n, SWD n, stable kimg, fade kimg, total kimg, tick kimg,
#        ticks between scores, minibatch)
SIZES = {
    "full": (8000, 2000, 1000, 2000, 30.0, 30.0, 300.0, 10.0, 4, 32),
    "quick": (500, 128, 32, 128, 0.25, 0.25, 2.0, 0.256, 1, 16),
}


class PaperEMA:
    """The paper's G_ema (fixed `decay` per step) kept beside a run's own, by wrapping the loop's train_step.

    Exact: `update_ema(G_ema_paper, G, decay)` right after each step is what train_step itself does with
    `--ema-decay decay`, and the copy is taken at the first step, before G has changed (the loop's G_ema
    starts as that same copy). G's trajectory does not depend on either G_ema.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.G_ema: torch.nn.Module | None = None
        self.nimg = 0

    def __enter__(self) -> PaperEMA:
        self._wrapped = loop.train_step
        loop.train_step = self._step
        return self

    def __exit__(self, *exc: object) -> None:
        loop.train_step = self._wrapped

    def _step(self, nets, opt_G, opt_D, loss, reals, *rest):
        if self.G_ema is None:
            self.G_ema = copy.deepcopy(nets.G).eval().requires_grad_(False)
        stats = self._wrapped(nets, opt_G, opt_D, loss, reals, *rest)
        update_ema(self.G_ema, nets.G, self.decay)
        self.nimg += reals.shape[0]
        return stats


def prep(photos: list[Path], out: Path) -> Path:
    """`progan prep --crop center --target 32` on a list of photos (the command's own core function)."""
    from progan_cli.data.prep import PrepOptions, run_prep

    summary = run_prep([str(p) for p in photos], out, PrepOptions(target=TARGET, crop="center"), device="cpu",
                       workers=2)
    log(f"prep: {summary.images} images from {summary.sources} photos in {summary.seconds:.1f} s -> {out}")
    return out


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of celeba-half JPEGs")
    parser.add_argument("--out", type=Path, help="output folder (new or empty)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, same code path (~1-2 minutes)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads; 1 on a machine shared with other jobs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fmap-base", type=int, default=256)
    parser.add_argument("--fmap-max", type=int, default=64)
    parser.add_argument("--latent-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = "quick" if args.quick else "full"
    n_train, n_heldout, n_fid, n_swd, stable, fade, total, tick, score_ticks, minibatch = SIZES[size]
    out = args.out or Path(f"celeba_quality{'_quick' if args.quick else ''}")
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: {out} already holds files; pass another --out")
    photos = sorted(args.data.glob("*.jpg"))
    if len(photos) < n_train + n_heldout:
        sys.exit(f"error: {args.data} has {len(photos)} photos; {n_train + n_heldout} needed")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    from progan_cli.config import TrainConfig
    from progan_cli.data.pyramid import Pyramid, write_pyramid
    from progan_cli.images import save_grid
    from progan_cli.metrics.features import Extractor
    from progan_cli.metrics.fid import compute_fid
    from progan_cli.metrics.in_training import make_training_metrics
    from progan_cli.metrics.sources import PyramidSource
    from progan_cli.metrics.swd import compute_swd
    from progan_cli.networks import untrained_generator

    # Data: the first photos train, the last ones are the metric reals (disjoint people mostly, as in
    # CelebA's own split by file number).
    train = prep(photos[:n_train], out / "train.h5")
    heldout = prep(photos[-n_heldout:], out / "heldout.h5")
    with Pyramid(train) as pyr:
        train_images = pyr.images(TARGET)
    with Pyramid(heldout) as pyr:
        heldout_images = pyr.images(TARGET)
    train_part = write_pyramid(out / "train_part.h5", train_images[:n_fid])

    cfg = TrainConfig(data=str(train.resolve()), target=TARGET, fmap_base=args.fmap_base, fmap_max=args.fmap_max,
                      latent_size=args.latent_size, stable_kimg=stable, fade_kimg=fade, total_kimg=total,
                      minibatch={r: minibatch for r in (4, 8, 16, 32)}, device=args.device, workers=0,
                      seed=args.seed, tick_kimg=tick, metrics_ticks=score_ticks, snapshot_ticks=10**6, keep_checkpoints=1,
                      grid=(8, 8))
    names = [f"fid{n_fid}", f"swd{n_swd}"]
    score = make_training_metrics(names, heldout, TARGET, args.device, seed=args.seed)
    rows: list[dict] = []

    # References: real vs real, and the run's own initial network (the loop seeds, then builds).
    t0 = time.time()
    extractor = Extractor(None, "ttur", args.device)
    floor_fid = compute_fid(PyramidSource(train_part, TARGET), PyramidSource(heldout, TARGET), extractor)["fid"]
    swd_reals = torch.from_numpy(heldout_images[:n_swd]).permute(0, 3, 1, 2)
    floor_swd = compute_swd(torch.from_numpy(train_images[:n_swd]).permute(0, 3, 1, 2), swd_reals, seed=args.seed)
    rows.append({"row": "real vs real", "kimg": None, "fid": floor_fid, "swd": floor_swd["mean"]})
    values = score(untrained_generator(cfg), TARGET)
    rows.append({"row": "untrained", "kimg": 0.0, "fid": values[names[0]], "swd": values[names[1]]})
    score_sec = time.time() - t0
    log(f"references: real vs real FID {floor_fid:.2f} SWD {floor_swd['mean']:.2f}; untrained FID "
        f"{rows[-1]['fid']:.2f} SWD {rows[-1]['swd']:.2f} ({score_sec:.0f} s)")

    def metrics(G_ema: torch.nn.Module, res: int) -> dict[str, float]:
        """Both G_ema at 32x32 stable ticks; nothing below (the reals are 32x32)."""
        nonlocal score_sec
        if res != TARGET:
            return {}
        t = time.time()
        ours, paper = score(G_ema, res), score(ema.G_ema, res)
        score_sec += time.time() - t
        kimg = ema.nimg / 1000
        rows.append({"row": "G_ema", "kimg": kimg, "fid": ours[names[0]], "swd": ours[names[1]],
                     "fid_paper": paper[names[0]], "swd_paper": paper[names[1]]})
        log(f"kimg {kimg:.1f}: FID {ours[names[0]]:.2f} (paper's EMA {paper[names[0]]:.2f}), SWD "
            f"{ours[names[1]]:.2f} ({paper[names[1]]:.2f})")
        return {**ours, **{f"{k}_paper_ema": v for k, v in paper.items()}}

    def progress(p, line: dict | None) -> None:
        if line is not None:
            log(f"tick {line['tick']}: kimg {line['kimg']:.1f}/{total:g} {line['res']}x{line['res']} {line['phase']}"
                f"  {line['img_per_s']:.1f} img/s  loss_D {line['loss_D']:.3f} loss_G {line['loss_G']:.3f}")

    run = out / "run"
    with PaperEMA(PAPER_DECAY) as ema:
        state = loop.training_loop(cfg, run, metrics=metrics, on_progress=progress)
    train_sec = json.loads((run / "log.jsonl").read_text().splitlines()[-1])["total_sec"]

    # Grids: the final G_ema both ways on the same latents, and the held-out reals.
    z = torch.randn(64, cfg.latent_size, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        save_grid(state.nets.G_ema.cpu()(z, TARGET), out / "fakes.png", 8)
        save_grid(ema.G_ema.cpu()(z, TARGET), out / "fakes_paper.png", 8)
    save_grid(torch.from_numpy(heldout_images[:64]).permute(0, 3, 1, 2), out / "reals.png", 8)
    try:
        from progan_cli.plot import check_figure, read_runs, render

        render(read_runs([run]), check_figure(out / "curves.png"))
    except Exception as exc:  # the plot is a convenience; the numbers stand without it
        log(f"no curves.png: {exc}")

    result = {"size": size, "config": cfg.to_dict(), "n_fid": n_fid, "n_heldout": n_heldout, "n_swd": n_swd,
              "paper_decay": PAPER_DECAY, "rows": rows, "train_sec": train_sec, "score_sec": score_sec,
              "wall_sec": time.time() - started, "threads": args.threads,
              "load_avg": list(os.getloadavg())}
    with atomic_write(out / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    log(f"wrote {out}/: results.json, fakes.png, fakes_paper.png, reals.png, curves.png, run/")


def table(result: dict) -> str:
    """The markdown table of results.json."""
    n = f"FID ({result['n_fid']} vs {result['n_heldout']} held-out)"
    s = f"SWD x1e3 ({result['n_swd']} vs {result['n_swd']})"
    lines = [f"| | kimg | {n}, default G_ema | same, paper's G_ema | {s}, default G_ema | same, paper's G_ema |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        kimg = "" if r["kimg"] is None else f"{r['kimg']:g}"
        paper_fid = f"{r['fid_paper']:.2f}" if "fid_paper" in r else "="
        paper_swd = f"{r['swd_paper']:.2f}" if "swd_paper" in r else "="
        lines.append(f"| {r['row']} | {kimg} | {r['fid']:.2f} | {paper_fid} | {r['swd']:.2f} | {paper_swd} |")
    lines.append("")
    lines.append(f"training {result['train_sec'] / 60:.1f} min, scoring {result['score_sec'] / 60:.1f} min, "
                 f"{result['threads']} threads, load average at the end {result['load_avg'][0]:.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
