"""GPU check: one script that shows what progan does on a GPU machine, in under 8 minutes on one H200.

    python3 benchmarks/gpu_check.py prepare            # here (registry + ../shared/data): fills .gpu_check/
    python3 benchmarks/gpu_check.py run --out OUT      # on the GPU machine, from the repository root
    python3 benchmarks/gpu_check.py run --dry-run      # the same code paths at toy sizes on the CPU (~1 min)

`prepare` puts in `.gpu_check/` (ignored by git, ~15 MB) what a machine without a registry or our data needs:
the wheels of the dependencies its image lacks (mtcnn, for the MTCNN weights, and lz4, for reading them) and a
data subset (2,000 celeba-half photos, the 32 celeba-full ones). `run` installs the wheels into a temporary
folder, then, each stage timed and reported even when another fails:

1. tests: the test files that touch CUDA paths (CUDA-only tests run there; commands left on `--device auto`
   use the GPU), without those marked slow;
2. training speed: images/s of whole training steps (`benchmarks/train_speed.py`: D step with the WGAN-GP
   penalty, G step, Adam, EMA; stable phase, random reals, default widths, the official minibatch) at 32, 64
   and 128, fp32, tf32 and bf16 (the training loop's --precision policy), and the share of the
   H200's bf16 peak (~790 TFLOP/s) from the FLOPs per image of a step (counted on the meta device);
3. prep: `progan prep` images/s with detection (MTCNN) on 320 CelebA photos and on the fixture photos (eight
   sizes), and with the centre crop on 10,000 listed celeba-half photos (the reals of the next stages);
4. a bf16 training run to 64x64 with short phases, stopped by SIGINT after ~70 s and resumed for ~30 s: the
   checkpoint written at the stop, images/s from the log, and kimg going on from where it stopped;
5. FID 10k vs 10k (`progan fid` of the reals against 10,000 images of the run's G_ema) wall time, with
   Inception weights drawn at random (the real ones are 87 MB, more than a device call carries; the time
   does not depend on the values, so the FID value printed is meaningless);
6. SWD on 10,000 images per set at 64x64 (`progan swd`) wall time.

Everything goes to stdout and to OUT/gpu_check.json (OUT/logs.txt holds the subprocesses' output); exit
status 0 when every stage ran. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

BUNDLE = ROOT / ".gpu_check"
SHARED_DATA = Path(os.environ.get("PROGAN_SHARED_DATA", ROOT.parent / "shared" / "data"))
WHEELS = ("mtcnn", "lz4")  # what the GPU machine's image lacks (its torch, h5py, typer, scipy... will do)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
GPU_TESTS = ("tests/test_layers.py", "tests/test_swd.py", "tests/test_mtcnn.py", "tests/test_prep.py",
             "tests/test_files_devices.py", "tests/test_networks.py", "tests/test_loss.py",
             "tests/test_metric_sources.py")
FLOPS_PER_IMAGE = {32: 167e9, 64: 331e9, 128: 495e9}  # one training step, default widths (meta-device count)
BF16_PEAK = 790e12  # H200, dense bf16 matrix products (measured 769-798 TFLOP/s on the device machine)
FIXTURE_PHOTOS = ROOT / "tests" / "fixtures" / "photos"


@dataclass(frozen=True)
class Sizes:
    """What one `run` does: the real check on a GPU, or toy sizes on the CPU (same code paths)."""

    device: str
    tests: tuple[str, ...]
    test_timeout: int
    train_res: tuple[int, ...]
    train_batch: int | None  # None: the official minibatch per resolution
    train_steps: int
    train_widths: tuple[int, int, int] | None  # fmap_base, fmap_max, latent size; None: the defaults
    detect_repeat: int  # times the detection photos are listed
    reals_target: int
    reals_repeat: int  # times the celeba-half photos are listed (10,000 reals)
    run_args: tuple[str, ...]
    run_first_s: float
    run_resumed_s: float
    metric_n: int
    workers: int


GPU = Sizes(device="cuda", tests=GPU_TESTS, test_timeout=120, train_res=(32, 64, 128), train_batch=None,
            train_steps=10, train_widths=None, detect_repeat=10, reals_target=64, reals_repeat=5,
            run_args=("--target", "64", "--stable-kimg", "30", "--fade-kimg", "30", "--tick-kimg", "4",
                      "--workers", "6"),
            run_first_s=70, run_resumed_s=30, metric_n=10000, workers=8)
DRY = Sizes(device="cpu", tests=("tests/test_files_devices.py",), test_timeout=120, train_res=(4, 8),
            train_batch=2, train_steps=1, train_widths=(128, 64, 32), detect_repeat=1, reals_target=16, reals_repeat=1,
            run_args=("--target", "8", "--stable-kimg", "1", "--fade-kimg", "1", "--tick-kimg", "0.016",
                      "--minibatch", "8", "--fmap-base", "128", "--fmap-max", "64", "--latent-size", "32",
                      "--workers", "0"),
            run_first_s=5, run_resumed_s=3, metric_n=2, workers=1)


@dataclass
class Report:
    """Stage results, printed as they come and written to OUT/gpu_check.json; subprocess output to logs.txt."""

    out: Path
    results: dict = field(default_factory=dict)

    def stage(self, name: str, fn: Callable[[], dict]) -> None:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            result = {"ok": True, **fn()}
        except Exception as exc:  # one stage failing must not hide the others' figures
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-3000:]}
        result["stage_seconds"] = round(time.perf_counter() - start, 1)
        self.results[name] = result
        for key, value in result.items():
            if key != "traceback":
                print(f"   {key}: {json.dumps(value) if isinstance(value, (list, dict)) else value}", flush=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1))

    def log(self, title: str, text: str) -> None:
        with open(self.out / "logs.txt", "a") as f:
            f.write(f"===== {title}\n{text[-20000:]}\n")


def progan(*args: str) -> list[str]:
    return [sys.executable, "-m", "progan_cli", *map(str, args)]


def command(report: Report, title: str, cmd: list[str], timeout: float, stdin: str | None = None) -> str:
    """Run a command to its end; its stdout back, everything logged; an error if it failed."""
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    report.log(f"{title}: {' '.join(cmd)} -> {done.returncode}", done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"{title} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def install_wheels(wheels: Path) -> None:
    """pip install the carried wheels into a temporary folder, for this process and its subprocesses."""
    site = Path(tempfile.mkdtemp(prefix="gpu_check_site_"))
    found = sorted(wheels.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--target", str(site), *map(str, found)], check=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])
    print(f"installed {', '.join(w.name for w in found)}", flush=True)


# ---- the stages --------------------------------------------------------------------------------------------


def stage_environment(sizes: Sizes) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": sizes.device, "cpu_cores": os.cpu_count()}
    if sizes.device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def stage_tests(report: Report, sizes: Sizes, data: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *sizes.tests]
    env = {**os.environ, "PROGAN_SHARED_DATA": str(data)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=sizes.test_timeout, cwd=ROOT, env=env)
    report.log("pytest", done.stdout + done.stderr)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode:
        raise RuntimeError(f"pytest exited with {done.returncode}: {summary}")
    return {"summary": summary}


def stage_train_speed(sizes: Sizes) -> dict:
    """benchmarks/train_speed.py's own step timing at each --precision of the training loop (fp32: IEEE,
    tf32: TF32 matmuls/convolutions, bf16: autocast), with its cuDNN autotuning on CUDA."""
    import torch
    import train_speed

    from progan_cli.devices import tf32

    if sizes.train_widths:  # toy widths for the dry run: train_speed builds its networks from these names
        from functools import partial

        from progan_cli.networks import Discriminator, Generator

        base, top, latent = sizes.train_widths
        train_speed.Generator = partial(Generator, fmap_base=base, fmap_max=top)
        train_speed.Discriminator = partial(Discriminator, fmap_base=base, fmap_max=top)
        train_speed.LATENT = latent
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = sizes.device == "cuda"  # as the training loop sets it on CUDA
    rows = []
    try:
        for precision in ("fp32", "tf32", "bf16"):  # the training loop's --precision policy (devices.tf32)
            argv = ["--res", *map(str, sizes.train_res), "--device", sizes.device,
                    "--precision", "bf16" if precision == "bf16" else "fp32",
                    "--steps", str(sizes.train_steps), "--no-anchor", "--json"]
            argv += ["--channels-last"] if sizes.device == "cuda" else []
            argv += ["--batch", str(sizes.train_batch)] if sizes.train_batch else []
            with contextlib.redirect_stdout(io.StringIO()), tf32(precision == "tf32"):
                for row in train_speed.main(argv):
                    flops = FLOPS_PER_IMAGE.get(row["res"])
                    rows.append({"res": row["res"], "precision": precision, "batch": row["batch"],
                                 "img_per_s": round(row["progan"], 1),
                                 "share_of_bf16_peak": round(row["progan"] * flops / BF16_PEAK, 4) if flops else None})
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return {"rows": rows}


def _prep(report: Report, sizes: Sizes, title: str, photos: list[Path], out: Path, *args: str) -> dict:
    stdout = command(report, title, progan("prep", "-", "--out", out, "--device", sizes.device, "--json",
                                           "--workers", sizes.workers, "--overwrite", *args),
                     timeout=300, stdin="\n".join(map(str, photos)) + "\n")
    summary = json.loads(stdout)
    return {"photos": len(photos), "images": summary["images"],
            "photos_per_s": round(summary["photos_per_second"], 1), "seconds": round(summary["seconds"], 1)}


def stage_prep(report: Report, sizes: Sizes, data: Path, work: Path) -> dict:
    """Detection (MTCNN on the device) and aligned crops: CelebA photos, then the fixture photos' 8 sizes."""
    celeba = sorted((data / "celeba-full").glob("*.jpg")) if (data / "celeba-full").is_dir() else []
    fixtures = sorted(FIXTURE_PHOTOS.glob("*.jpg"))
    if sizes is DRY:  # two small fixture photos stand for CelebA on the CPU
        celeba, fixtures = fixtures[1:2], [p for p in fixtures if "no-faces" not in p.name][-1:]
    return {
        "celeba_align": _prep(report, sizes, "prep celeba", celeba * sizes.detect_repeat, work / "celeba.h5",
                              "--target", "128", "--batch", "64", "--upscale"),
        "mixed_sizes_align": _prep(report, sizes, "prep fixtures", fixtures * max(1, sizes.detect_repeat // 2),
                                   work / "fixtures.h5", "--target", "128", "--faces", "all", "--batch", "32",
                                   "--upscale"),  # small faces kept: this measures detection, not the crops
    }


def stage_reals(report: Report, sizes: Sizes, data: Path, work: Path) -> dict:
    """The reals of the later stages: celeba-half (or, dry, synthetic photos) listed to 10,000, centre crop."""
    photos = sorted((data / "celeba-half").glob("*.jpg")) if sizes is GPU else _synthetic_photos(work / "synth", 6)
    return _prep(report, sizes, "prep reals", photos * sizes.reals_repeat, work / "reals.h5", "--crop", "center",
                 "--target", str(sizes.reals_target), "--batch", "500")


def _synthetic_photos(folder: Path, count: int) -> list[Path]:
    """Smooth random 89x109 PNGs (the dry run has no CelebA)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (14, 12, 3), dtype=np.uint8)
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(small).resize((89, 109), Image.Resampling.BILINEAR).save(paths[-1])
    return paths


def _train_for(report: Report, title: str, cmd: list[str], run: Path, seconds: float) -> int:
    """Start a training command; once it has logged a new tick and `seconds` have passed since the start,
    SIGINT it (it checkpoints, then exits 130). Its output goes to a file, read at the end."""
    ticks = len(_log_lines(run))
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as output:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None and (time.monotonic() - start < seconds or len(_log_lines(run)) <= ticks):
            if time.monotonic() - start > seconds + 120:
                break  # no tick in two minutes more: stop it anyway, the log will tell
            time.sleep(0.5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        output.seek(0)
        report.log(f"{title}: {' '.join(cmd)} -> {proc.returncode}", output.read())
    return proc.returncode


def _log_lines(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def stage_stop_and_resume(report: Report, sizes: Sizes, work: Path) -> dict:
    """bf16 training stopped by SIGINT and resumed: checkpoint at the stop, kimg going on after it."""
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    first = _train_for(report, "train", progan("train", work / "reals.h5", "--out", run, "--precision", "bf16",
                                               "--device", sizes.device, *sizes.run_args), run, sizes.run_first_s)
    before = _log_lines(run)
    stopped = [p.name for p in sorted((run / "checkpoints").glob("*.pt"))] if (run / "checkpoints").is_dir() else []
    if first != 130 or not stopped:
        raise RuntimeError(f"the first part exited with {first} and left checkpoints {stopped}")
    second = _train_for(report, "train --resume", progan("train", "--resume", run), run, sizes.run_resumed_s)
    after = _log_lines(run)[len(before):]
    stop_kimg = before[-1]["kimg"] if before else 0.0
    if not after or after[-1]["kimg"] <= stop_kimg:
        raise RuntimeError(f"the resumed run (exit {second}) logged no tick beyond kimg {stop_kimg}")
    return {"stopped_at_checkpoint": stopped[-1], "first_part_kimg": stop_kimg, "resumed_exit": second,
            "end_kimg": after[-1]["kimg"], "end_res": after[-1]["res"],
            "img_per_s_last_ticks": [round(line["img_per_s"], 1) for line in (before + after)[-4:]],
            "mem_gb": after[-1].get("mem_gb")}


def _random_inception(path: Path) -> Path:
    """pytorch-fid-layout Inception weights drawn at random (He init, identity batch norms): same shapes and
    compute as the real ones, for timing only."""
    import torch

    from progan_cli.metrics.inception import FIDInception

    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in FIDInception(with_classifier=False).state_dict().items():
        if key.endswith(".conv.weight"):
            stem = key[: -len(".conv.weight")]
            state[key] = torch.randn(value.shape, generator=gen) * (2 / value[0].numel()) ** 0.5
            channels = value.shape[0]
            state.update({f"{stem}.bn.weight": torch.ones(channels), f"{stem}.bn.bias": torch.zeros(channels),
                          f"{stem}.bn.running_mean": torch.zeros(channels),
                          f"{stem}.bn.running_var": torch.ones(channels)})
    torch.save(state, path)
    return path


def stage_fid(report: Report, sizes: Sizes, work: Path) -> dict:
    weights = _random_inception(work / "inception_random.pth")
    start = time.perf_counter()
    stdout = command(report, "fid", progan("fid", work / "reals.h5", work / "run", "--n", sizes.metric_n,
                                           "--weights", weights, "--no-cache", "--json", "--device", sizes.device,
                                           "--batch-size", "250" if sizes is GPU else "4"), timeout=400)
    result = json.loads(stdout)
    return {"n": result["n"], "seconds": round(time.perf_counter() - start, 1), "fid_random_weights": result["fid"]}


def stage_swd(report: Report, sizes: Sizes, work: Path) -> dict:
    reals = work / "reals.h5"
    start = time.perf_counter()
    stdout = command(report, "swd", progan("swd", reals, reals, "--res", sizes.reals_target, "--n", sizes.metric_n,
                                           "--device", sizes.device, "--json"), timeout=300)
    result = json.loads(stdout)
    return {"n": result["n"], "res": sizes.reals_target, "seconds": round(time.perf_counter() - start, 1),
            "swd_mean": result["mean"]}


def run(args: argparse.Namespace) -> int:
    sizes = DRY if args.dry_run else GPU
    if args.dry_run:  # it checks code paths, not speed: one thread each, so a shared CI machine is not swamped
        os.environ["OMP_NUM_THREADS"] = "1"
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_out_"))
    out.mkdir(parents=True, exist_ok=True)
    if (args.bundle / "wheels").is_dir() and not args.dry_run:
        install_wheels(args.bundle / "wheels")
    import torch

    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("Error: no CUDA device; use --dry-run on a machine without a GPU", file=sys.stderr)
        return 2
    data = args.bundle / "data" if (args.bundle / "data").is_dir() else SHARED_DATA
    work = Path(tempfile.mkdtemp(prefix="gpu_check_work_"))
    report = Report(out)
    started = time.perf_counter()
    report.stage("environment", lambda: stage_environment(sizes))
    report.stage("tests", lambda: stage_tests(report, sizes, data))
    report.stage("train_speed", lambda: stage_train_speed(sizes))
    report.stage("prep", lambda: stage_prep(report, sizes, data, work))
    report.stage("reals", lambda: stage_reals(report, sizes, data, work))
    report.stage("stop_and_resume", lambda: stage_stop_and_resume(report, sizes, work))
    report.stage("fid", lambda: stage_fid(report, sizes, work))
    report.stage("swd", lambda: stage_swd(report, sizes, work))
    failed = [name for name, r in report.results.items() if not r["ok"]]
    print(f"== done in {time.perf_counter() - started:.0f} s; {'failed: ' + ', '.join(failed) if failed else 'all ran'}"
          f"; {out / 'gpu_check.json'}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def prepare(args: argparse.Namespace) -> int:
    """Wheels of WHEELS (the versions installed here) for the device machine's Python 3.12, and the data."""
    from importlib.metadata import version

    wheels, data = args.bundle / "wheels", args.bundle / "data"
    shutil.rmtree(args.bundle, ignore_errors=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", *platforms, "-d", str(wheels),
                    *(f"{name}=={version(name)}" for name in WHEELS)], check=True)
    for folder, count in (("celeba-half", 2000), ("celeba-full", 32)):
        files = sorted((SHARED_DATA / folder).glob("*.jpg"))[:count]
        if len(files) < count:
            print(f"Error: {SHARED_DATA / folder} holds {len(files)} JPEGs, the check needs {count}", file=sys.stderr)
            return 1
        (data / folder).mkdir(parents=True)
        for f in files:
            shutil.copy2(f, data / folder / f.name)
    size = sum(f.stat().st_size for f in args.bundle.rglob("*") if f.is_file())
    print(f"{args.bundle}: {size / 2**20:.1f} MiB (a device call carries at most 64 MiB with the tree)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["prepare", "run"])
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="wheels/ and data/ (default: .gpu_check)")
    parser.add_argument("--out", type=Path, help="where gpu_check.json and logs.txt go (default: a temp folder)")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: the same code paths")
    args = parser.parse_args(argv)
    return prepare(args) if args.what == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
