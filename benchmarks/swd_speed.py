"""SWD speed: progan's `compute_swd` against the plain numpy/scipy implementation of the official steps
(`tests/reference/swd_numpy.py`, the one tests/test_swd.py holds it to), side by side in one run, on the same
CelebA images and the same random draws.

    python3 benchmarks/swd_speed.py                  # 2 x 1024 faces at 64x64 and 128x128
    python3 benchmarks/swd_speed.py --n 256 --sizes 64

Images: the standard CelebA centre crop of ../shared/data/celeba-half (64x64), bilinearly upscaled for larger
sizes. Prints images/s (both sets counted) for each side, the ratio, and how far the two results differ.
`benchmarks/metrics_speed.py` calls `main()` and gets the rows back.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from reference.swd_numpy import numpy_swd  # noqa: E402

from progan_cli.metrics.swd import SWDSampler, compute_swd, swd_resolutions  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("PROGAN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def celeba_faces(folder: Path, count: int) -> torch.Tensor:
    """The first `count` celeba-half images, centre-cropped to 64x64, as uint8 NCHW."""
    files = sorted(folder.glob("*.jpg"))[:count]
    if len(files) < count:
        raise SystemExit(f"{folder} holds {len(files)} JPEGs, the benchmark needs {count}")
    crops = [np.asarray(Image.open(f).convert("RGB"))[29:93, 13:77] for f in files]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def at_size(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    up = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8)


def bench_one(a: torch.Tensor, b: torch.Tensor, seed: int) -> dict:
    """Time both implementations once on sets a and b; the numpy side gets the draws made beforehand."""
    sampler = SWDSampler(seed)
    levels = swd_resolutions(a.shape[-1])
    start = time.perf_counter()
    ours = compute_swd(a, b, seed=seed)
    t_ours = time.perf_counter() - start
    draws = (
        {r: sampler.centres(0, r, len(a)).numpy() for r in levels},
        {r: sampler.centres(1, r, len(b)).numpy() for r in levels},
        {r: sampler.directions(r).numpy() for r in levels},
    )
    a_np, b_np = a.numpy(), b.numpy()
    start = time.perf_counter()
    ref = numpy_swd(a_np, b_np, *draws)
    t_ref = time.perf_counter() - start
    rel = max(abs(ours["levels"][r] / ref[r] - 1) for r in levels)
    images = len(a) + len(b)
    return {
        "size": a.shape[-1],
        "n": len(a),
        "swd_mean": ours["mean"],
        "progan_img_s": images / t_ours,
        "numpy_img_s": images / t_ref,
        "ratio": t_ref / t_ours,
        "max_rel_diff": rel,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="images per set")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    faces = celeba_faces(args.data / "celeba-half", 2 * args.n)
    print(f"SWD, 2 x {args.n} CelebA faces, {args.threads} threads, seed {args.seed}")
    print(f"{'size':>5} {'progan img/s':>13} {'numpy img/s':>12} {'ratio':>6} {'max rel diff':>13}")
    rows = []
    for size in args.sizes:
        images = at_size(faces, size)
        row = bench_one(images[: args.n], images[args.n :], args.seed)
        rows.append(row)
        print(f"{size:>5} {row['progan_img_s']:>13.1f} {row['numpy_img_s']:>12.1f} "
              f"{row['ratio']:>5.2f}x {row['max_rel_diff']:>13.1e}", flush=True)
    return rows


if __name__ == "__main__":
    main()
