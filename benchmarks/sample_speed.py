"""Sampling speed: images/s of `progan sample` at one resolution, default widths, fp32 and bf16.

Times what the command runs (progan_cli.sampling): the generator in its fixed batches, uint8 conversion and
copy to the CPU (`render`), and with `--png` also the threaded PNG writing into a temporary folder
(`save_samples`). The weights are random (speed does not depend on them); the network is built as a run
with `--target RES` and the official widths builds it.

    python3 benchmarks/sample_speed.py --device cuda --res 128 --n 4096 --png
    python3 benchmarks/sample_speed.py --device cpu --res 32 --n 64 --precision fp32

Prints one JSON line per precision.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from progan_cli.config import TrainConfig  # noqa: E402
from progan_cli.formats import Networks  # noqa: E402
from progan_cli.networks import build_generator  # noqa: E402
from progan_cli.sampling import TrainedGenerator, generation_batch, save_samples  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--n", type=int, default=1024, help="images timed per precision (after a warm-up)")
    parser.add_argument("--png", action="store_true", help="also write the PNGs, as `progan sample --out` does")
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both",
                        help="bf16 is for GPUs: on a CPU without bf16 units it is far slower than fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = TrainConfig(data="", target=args.res)
    net = build_generator(cfg)
    about = Networks(config=cfg, weights={}, grown_to=args.res, alpha=1.0, cur_nimg=None, kind="random weights",
                     source="random", origin="random", licence=None)
    for precision in ("fp32", "bf16") if args.precision == "both" else (args.precision,):
        gen = TrainedGenerator(net.eval().requires_grad_(False), about, "G_ema", precision=precision)
        gen.to(device)
        batch = generation_batch(net, args.res, device)
        gen.sample(batch)  # warm-up: cuDNN algorithm choice, allocator
        with tempfile.TemporaryDirectory() as tmp:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            if args.png:
                save_samples(gen, range(args.n), 0, args.res, folder=Path(tmp))
            else:
                for _ in gen.generate(range(args.n)):
                    pass
            seconds = time.perf_counter() - start
        print(json.dumps({"device": str(device), "res": args.res, "precision": precision, "batch": batch,
                          "png": args.png, "n": args.n, "seconds": round(seconds, 3),
                          "img_per_s": round(args.n / seconds, 2), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
