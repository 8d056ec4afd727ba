"""Speed of `progan prep` against facenet-pytorch's MTCNN, side by side in one run (issue 2, "Speed").

Whole command: our `run_prep` (decode in threads, detect, aligned crop, shards, HDF5 pyramid write) against
facenet-pytorch doing decode + detect + crop (its own `MTCNN.forward`: detection, largest face, box crop
resized to the target) on the same photos and device. Detection alone: both detectors on the same decoded
photos. Each measurement is repeated and the best is kept, the two sides alternating, so that a busy machine
hurts both alike. Photo sets: CelebA 178x218 (celeba-full, listed `--repeat` times), CelebA 89x109
(celeba-half) and faces-wild (mixed sizes, up to 14 MP: facenet-pytorch needs equal sizes per batch, so it
gets them one at a time, and it detects on the full photo while we detect on a copy of at most 1024 px).

facenet-pytorch is an anchor, never a dependency. Its pins are stale, so install it without them:
    pip install --no-deps --target /tmp/fnp facenet-pytorch
    PYTHONPATH=/tmp/fnp python3 benchmarks/prep_speed.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from progan_cli.data.faces import load_rgb
from progan_cli.data.mtcnn import MTCNN
from progan_cli.data.prep import PrepOptions, run_prep

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PROGAN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def photo_sets(celeba_half: int, repeat: int, wild: int) -> dict[str, list[str]]:
    def files(folder: str) -> list[str]:
        path = SHARED_DATA / folder
        if not path.is_dir():
            sys.exit(f"{path} is absent: the benchmark runs on the shared photos")
        return sorted(str(p) for p in path.iterdir() if p.suffix.lower() in (".jpg", ".png"))

    return {
        f"celeba 178x218 (x{repeat})": files("celeba-full") * repeat,
        "celeba-half 89x109": files("celeba-half")[:celeba_half],
        "faces-wild": files("faces-wild")[:wild],
    }


def batches_of_equal_size(images: list[np.ndarray], size: int) -> list[list[np.ndarray]]:
    """Consecutive runs of at most `size` photos of one size (facenet-pytorch cannot mix sizes)."""
    out: list[list[np.ndarray]] = []
    for im in images:
        if out and len(out[-1]) < size and out[-1][0].shape == im.shape:
            out[-1].append(im)
        else:
            out.append([im])
    return out


def best_of(runs: int, fns: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Fastest of `runs` wall times of each function, the functions alternating."""
    best = {name: float("inf") for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    parser.add_argument("--batch", type=int, default=32, help="photos per detection batch, both sides")
    parser.add_argument("--celeba-half", type=int, default=320, help="how many celeba-half photos")
    parser.add_argument("--repeat", type=int, default=4, help="times the 32 celeba-full photos are listed")
    parser.add_argument("--wild", type=int, default=77, help="how many faces-wild photos (sorted by name)")
    parser.add_argument("--runs", type=int, default=2, help="repeats per measurement; the best is kept")
    parser.add_argument("--target", type=int, default=128)
    args = parser.parse_args()
    try:
        from facenet_pytorch import MTCNN as FacenetMTCNN
    except ImportError:
        sys.exit("facenet-pytorch is missing: pip install --no-deps --target /tmp/fnp facenet-pytorch, "
                 "then run with PYTHONPATH=/tmp/fnp")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ours = MTCNN(device=device)
    theirs = FacenetMTCNN(image_size=args.target, margin=0, select_largest=True, post_process=False, device=device)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, target {args.target}")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, sources in photo_sets(args.celeba_half, args.repeat, args.wild).items():
            options = PrepOptions(target=args.target, batch=args.batch)

            def prep_ours(sources=sources, options=options) -> None:
                out = Path(tmp) / "bench.h5"
                out.unlink(missing_ok=True)
                run_prep(sources, out, options, device=str(device), workers=2)

            def prep_theirs(sources=sources) -> None:
                images = [load_rgb(s) for s in sources]
                for batch in batches_of_equal_size(images, args.batch):
                    theirs(batch if len(batch) > 1 else batch[0])

            decoded = [load_rgb(s) for s in sources]
            whole = best_of(args.runs, {"ours": prep_ours, "facenet": prep_theirs,
                                        "decode": lambda sources=sources: [load_rgb(s) for s in sources]})
            detect = best_of(args.runs, {
                "ours": lambda d=decoded: [ours.detect(d[i : i + args.batch]) for i in range(0, len(d), args.batch)],
                "facenet": lambda d=decoded: [theirs.detect(b if len(b) > 1 else b[0])
                                              for b in batches_of_equal_size(d, args.batch)],
            })
            rows.append((name, len(sources), whole, detect))

    print(f"\n{'photos':<24}{'n':>5}  {'prep ours':>10} {'facenet':>9} {'ratio':>6}   "
          f"{'detect ours':>11} {'facenet':>9} {'ratio':>6}   {'decode':>7}")
    print(f"{'':<31}{'images/s':>17}{'':<10}{'ms/img':>18}{'':<11}{'ms/img':>7}")
    for name, n, whole, detect in rows:
        print(f"{name:<24}{n:>5}  {n / whole['ours']:>10.1f} {n / whole['facenet']:>9.1f} "
              f"{whole['facenet'] / whole['ours']:>5.2f}x   {1e3 * detect['ours'] / n:>11.2f} "
              f"{1e3 * detect['facenet'] / n:>9.2f} {detect['facenet'] / detect['ours']:>5.2f}x   "
              f"{1e3 * whole['decode'] / n:>7.2f}")


if __name__ == "__main__":
    main()
