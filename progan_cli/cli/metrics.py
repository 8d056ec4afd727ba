"""`progan fid A B`, `progan is A`, `progan swd A B`, `progan kid A B`, `progan pr REAL FAKE`, `progan msssim A`:
the paper's metrics and their successors on folders, pyramids, runs (FID also on stats).

Each prints one number on stdout (or everything with --json); progress goes to stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from progan_cli.cli.common import Device, Threads, err_console, print_json, setup_device

SOURCE_HELP = ("A folder of images (recursive), a pyramid .h5 (with --res), a generator with --n (a run folder, "
               "checkpoint, export, NVIDIA pickle or pytorch_GAN_zoo checkpoint), or FID statistics .npz (mu, sigma).")
Res = Annotated[Optional[int], typer.Option("--res", help="Pyramid level to read (default: the pyramid's target).")]
N = Annotated[Optional[int], typer.Option("--n", help="Images to generate from a generator (swd: "
                                          "also the most taken from each image set).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the generated latents (and of SWD's and KID's random "
                                   "draws).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Images per batch (Inception, generation).")]
Weights = Annotated[Optional[Path], typer.Option(
    "--weights", help="Inception weights (pytorch-fid .pth or fid-helper TorchScript); default: found offline, "
                      "see docs/metrics.md. Also $PROGAN_INCEPTION_WEIGHTS.")]
Protocol = Annotated[str, typer.Option(
    "--protocol", help="ttur (the original TF FID, as torch-fidelity) or pytorch-fid (its resize/normalisation).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print everything as JSON.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write cached features or statistics.")]
IMAGES_HELP = SOURCE_HELP.replace(", or FID statistics .npz (mu, sigma)", "")


def _progress() -> Callable[[str, int], Callable[[int], None]]:
    """A factory of stderr progress bars, one per source that runs through Inception."""
    from rich.progress import Progress

    def start(label: str, total: int) -> Callable[[int], None]:
        progress = Progress(console=err_console, transient=True)
        task = progress.add_task(f"Inception: {label}", total=total)
        progress.start()

        def advance(k: int) -> None:
            progress.advance(task, k)
            if progress.tasks[0].finished:
                progress.stop()

        return advance

    return start


def _warn_small(counts: list[int | None]) -> None:
    from progan_cli.metrics.fid import RELIABLE_N

    small = [n for n in counts if n is not None and n < RELIABLE_N]
    if small:
        err_console.print(f"[yellow]warning:[/] FID from {min(small)} images: below {RELIABLE_N} the 2048-d "
                          "covariance is rank-deficient and FID is biased upwards at small n; compare only "
                          "numbers computed with the same n.")


def _image_sources(paths: list[Path], res: int | None, n: int | None, device: str, seed: int, metric: str) -> list:
    """Open the sources of a metric that needs images (IS, SWD): FID statistics files are refused."""
    from progan_cli.errors import DataError
    from progan_cli.metrics.sources import StatsSource, open_sources

    sources = open_sources(paths, res, n, device, seed)
    for path, source in zip(paths, sources):
        if isinstance(source, StatsSource):
            raise DataError(f"{path}: FID statistics hold no images; {metric} needs images")
    return sources


def fid(
    a: Annotated[Path, typer.Argument(help=SOURCE_HELP)],
    b: Annotated[Optional[Path], typer.Argument(help="The second source; leave out with --save-stats.")] = None,
    res: Res = None,
    n: N = None,
    protocol: Protocol = "ttur",
    weights: Weights = None,
    save_stats: Annotated[Optional[Path], typer.Option(
        "--save-stats", help="Write A's statistics to this .npz (pytorch-fid's format) for later runs.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Let --save-stats replace an existing file.")] = False,
    n_reals: Annotated[Optional[int], typer.Option(
        "--n-reals", help="Read only the first N images of a folder or pyramid [default: all of them].")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write cached statistics.")] = False,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    json_out: JsonOut = False,
) -> None:
    """Frechet Inception Distance between two sources (TTUR's definition by default)."""
    from rich.markup import escape

    from progan_cli.errors import UsageError
    from progan_cli.metrics.features import Extractor
    from progan_cli.metrics.fid import compute_fid, save_stats as write_stats, size_mismatch, source_stats
    from progan_cli.metrics.sources import GeneratorSource, ImageSource, open_sources

    if b is None and save_stats is None:
        raise UsageError("give two sources to compare, or one with --save-stats FILE.npz")
    if save_stats is not None and save_stats.suffix != ".npz":
        raise UsageError(f"--save-stats {save_stats}: the file name must end in .npz")
    if save_stats is not None and save_stats.exists() and not overwrite:
        raise UsageError(f"--save-stats {save_stats} already exists; pass --overwrite to replace it")
    if n_reals is not None and n_reals < 2:
        raise UsageError(f"--n-reals {n_reals}: FID needs at least 2 images for a covariance")
    dev = setup_device(device, threads)
    extractor = Extractor(weights, protocol, dev, batch_size, progress=_progress())
    sources = open_sources([a] if b is None else [a, b], res, n, dev, seed)
    if n_reals is not None:
        stored = [isinstance(s, ImageSource) and not isinstance(s, GeneratorSource) for s in sources]
        if not any(stored):
            raise UsageError("--n-reals caps the images read from a folder or pyramid; no source here is one")
        sources = [s.first(n_reals) if keep else s for s, keep in zip(sources, stored)]
    mismatch = size_mismatch(sources)
    if mismatch:
        err_console.print(f"[yellow]warning:[/] {escape(mismatch)}", soft_wrap=True)
    source_a, *rest = sources
    if b is None:
        stats, _ = source_stats(source_a, extractor, not no_cache)
        path = write_stats(stats, save_stats)
        print_json({"stats": str(path), "n": stats.count, "protocol": stats.protocol,
                    "weights": stats.weights}) if json_out else print(path)
        return
    result = compute_fid(source_a, rest[0], extractor, use_cache=not no_cache, save_a=save_stats)
    _warn_small(result["n"])
    print_json(result) if json_out else print(f"{result['fid']:.6g}")


def inception_score_cmd(
    a: Annotated[Path, typer.Argument(help=IMAGES_HELP)],
    splits: Annotated[int, typer.Option("--splits", help="Consecutive splits the score is averaged over.")] = 10,
    res: Res = None,
    n: N = None,
    protocol: Protocol = "ttur",
    weights: Weights = None,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    json_out: JsonOut = False,
) -> None:
    """Inception Score (Salimans et al. 2016): mean and std over splits; needs the 1008-class classifier."""
    import time

    from progan_cli.errors import DataError
    from progan_cli.metrics.features import Extractor
    from progan_cli.metrics.inception_score import inception_score_splits

    start = time.perf_counter()
    dev = setup_device(device, threads)
    (source,) = _image_sources([a], res, n, dev, seed, "IS")
    if source.count < splits:
        raise DataError(f"{a}: {source.count} images cannot fill {splits} splits; give more images or --splits "
                        f"{max(1, source.count)}")
    extractor = Extractor(weights, protocol, dev, batch_size, need_classifier=True, progress=_progress())
    scores = inception_score_splits(extractor.run(source, logits=True)[1], splits)
    if json_out:
        print_json({"is": float(scores.mean()), "std": float(scores.std()), "splits": scores.tolist(),
                    "n": source.count, "protocol": protocol, "weights": extractor.weights.fingerprint,
                    "seconds": round(time.perf_counter() - start, 3)})
    else:
        print(f"{scores.mean():.6g} {scores.std():.6g}")


def swd(
    a: Annotated[Path, typer.Argument(help=IMAGES_HELP)],
    b: Annotated[Path, typer.Argument(help="The second source, with as many images as A.")],
    res: Res = None,
    n: N = None,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    json_out: JsonOut = False,
) -> None:
    """Sliced Wasserstein distance (the paper's section 5) x1e3, averaged over Laplacian levels."""
    import time

    from progan_cli.errors import DataError
    from progan_cli.metrics.swd import compute_swd_batches, swd_batch_size

    start = time.perf_counter()
    dev = setup_device(device, threads)
    sources = _image_sources([a, b], res, n, dev, seed, "SWD")
    # With --n, a larger image set contributes its first n images (the paper: 16384 reals vs 16384 fakes).
    counts = [s.count if n is None else min(s.count, n) for s in sources]
    if counts[0] != counts[1]:
        raise DataError(f"SWD compares equal numbers of images: {a} has {counts[0]}, {b} has {counts[1]}; "
                        f"pass --n {min(counts)} to use that many of each")
    result = compute_swd_batches(*(s.batches(swd_batch_size(s.res)) for s in sources), counts[0], seed, device=dev)
    if json_out:
        print_json({**result, "seconds": round(time.perf_counter() - start, 3)})
    else:
        print(f"{result['mean']:.6g}")


def _feature_metric(a: Path, b: Path, res: int | None, n: int | None, protocol: str, weights: Path | None,
                    no_cache: bool, batch_size: int, device: str, threads: int | None, seed: int, json_out: bool, metric: str,
                    check: Callable[[int, int], object], compute: Callable, text: Callable[[dict], str]) -> None:
    """A metric of the pool3 features of A and B (KID, PR): the counts `check`ed before one Inception pass per
    source, then `compute`(features_a, features_b, device) printed as `text` or JSON."""
    import time

    from progan_cli.metrics.features import Extractor

    start = time.perf_counter()
    dev = setup_device(device, threads)
    sources = _image_sources([a, b], res, n, dev, seed, metric)
    check(*(s.count for s in sources))
    extractor = Extractor(weights, protocol, dev, batch_size, progress=_progress())
    fa, fb = (extractor.features(s, use_cache=not no_cache) for s in sources)
    result = compute(fa.pool3, fb.pool3, dev)
    if json_out:
        print_json({**result, "n": [s.count for s in sources], "protocol": protocol,
                    "weights": extractor.weights.fingerprint, "seconds": round(time.perf_counter() - start, 3)})
    else:
        print(text(result))


def kid(
    a: Annotated[Path, typer.Argument(help=IMAGES_HELP)],
    b: Annotated[Path, typer.Argument(help="The second source.")],
    subsets: Annotated[int, typer.Option("--subsets", help="Random subsets the MMD is averaged over.")] = 100,
    subset_size: Annotated[int, typer.Option("--subset-size", help="Images per subset (capped at the smaller "
                                             "set).")] = 1000,
    res: Res = None,
    n: N = None,
    protocol: Protocol = "ttur",
    weights: Weights = None,
    no_cache: NoCache = False,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    json_out: JsonOut = False,
) -> None:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std of the unbiased MMD^2 over subsets."""
    from progan_cli.metrics.kid import compute_kid, subset_size_for

    _feature_metric(a, b, res, n, protocol, weights, no_cache, batch_size, device, threads, seed, json_out, "KID",
                    lambda na, nb: subset_size_for(na, nb, subsets, subset_size),
                    lambda fa, fb, dev: compute_kid(fa, fb, subsets, subset_size, seed, dev),
                    lambda r: f"{r['kid']:.6g} {r['kid_std']:.6g}")


def precision_recall(
    a: Annotated[Path, typer.Argument(help="The real images: " + IMAGES_HELP)],
    b: Annotated[Path, typer.Argument(help="The generated images (same kinds of source).")],
    k: Annotated[int, typer.Option("--k", help="Neighbours that set each ball's radius (the paper's 3).")] = 3,
    res: Res = None,
    n: N = None,
    protocol: Protocol = "ttur",
    weights: Weights = None,
    no_cache: NoCache = False,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    json_out: JsonOut = False,
) -> None:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of B against A, on Inception pool3 features."""
    from progan_cli.metrics.precision_recall import check_counts, compute_precision_recall

    _feature_metric(a, b, res, n, protocol, weights, no_cache, batch_size, device, threads, seed, json_out,
                    "precision/recall", lambda na, nb: check_counts(na, nb, k),
                    lambda fa, fb, dev: compute_precision_recall(fa, fb, k, dev),
                    lambda r: f"{r['precision']:.6g} {r['recall']:.6g}")


def msssim(
    a: Annotated[Path, typer.Argument(help=IMAGES_HELP + " Images 0 and 1, 2 and 3, ... form the pairs.")],
    res: Res = None,
    n: N = None,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    json_out: JsonOut = False,
) -> None:
    """Mean MS-SSIM over pairs of images (the paper's variation measure; lower = more diverse)."""
    import time

    from progan_cli.metrics.msssim import check_size, compute_msssim

    start = time.perf_counter()
    (source,) = _image_sources([a], res, n, setup_device(device, threads), seed, "MS-SSIM")
    check_size(source.res)
    result = compute_msssim(source.batches(batch_size), max(source.count // 2, 1))  # 1 image: one Error line
    if json_out:
        print_json({**result, "n": source.count, "seconds": round(time.perf_counter() - start, 3)})
    else:
        print(f"{result['msssim']:.6g}")


def register(app: typer.Typer) -> None:
    app.command("fid")(fid)
    app.command("is")(inception_score_cmd)
    app.command("swd")(swd)
    app.command("kid")(kid)
    app.command("pr")(precision_recall)
    app.command("msssim")(msssim)
