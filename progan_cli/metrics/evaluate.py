"""Scoring generators with the metrics named by their protocol, for one G_ema during training or for every
checkpoint of finished runs (`progan eval`), as stylegan2-ada's calc_metrics does.

A metric name says what is measured and on how many images (the protocol is in the name):
- `fid<N>`: FID of N generated images against the statistics of the whole real level;
- `kid<N>`: KID of N generated images against the whole real level (100 subsets of 1000, see kid.py);
- `pr<N>`: precision and recall (k = 3) of N generated images against the first N real ones;
- `is<N>`: Inception Score of N generated images (10 splits; needs the classifier weights);
- `swd<N>` / `swd`: SWD of N images of each set (16,384 by default, the paper's), capped at the level's size;
- `msssim<N>` / `msssim`: mean MS-SSIM over N pairs of generated images (10,000 pairs by default).
N is a count, with `k` for thousands (`fid10k`, `fid500`). SWD and MS-SSIM need 16x16 and are skipped below.

One Inception pass per source serves FID, IS, KID and precision/recall together: the generator draws the
largest N those metrics ask for once, each metric takes the first N of its features, and the real level's
features (or only its FID statistics when nothing else needs them) are computed once per resolution and
cached on disk. Every source draws its latents from `seed`, so the first N images are the same whatever the
other metrics ask for.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from progan_cli.errors import CheckpointError, DataError, UsageError
from progan_cli.metrics.msssim import MIN_RES as MSSSIM_MIN_RES
from progan_cli.metrics.precision_recall import NEIGHBOURS

if TYPE_CHECKING:
    from progan_cli.metrics.features import Features
    from progan_cli.metrics.swd import SetDescriptors

INCEPTION_KINDS = ("fid", "kid", "pr", "is")
KINDS = (*INCEPTION_KINDS, "swd", "msssim")
DEFAULT_COUNT = {"swd": 16384, "msssim": 10_000}  # what `swd` and `msssim` mean without a count
MIN_RES = {"swd": 16, "msssim": MSSSIM_MIN_RES}
DISPLAY = {"fid": "FID", "kid": "KID", "pr": "precision/recall", "is": "IS", "swd": "SWD", "msssim": "MS-SSIM"}
IS_SPLITS = 10
# The fewest images (of each set) a metric can be computed from: a covariance, a KID subset, k + 1 neighbours.
MIN_COUNT = {"fid": 2, "kid": 2, "pr": NEIGHBOURS + 1, "is": IS_SPLITS}
METRICS_FILE = "metrics.jsonl"
_NAME = re.compile(r"^(fid|kid|pr|is|swd|msssim)(\d+)?(k?)$")


@dataclass(frozen=True)
class MetricSpec:
    """One metric as named: `kind` and `n`, the generated images it reads (pairs for MS-SSIM)."""

    name: str
    kind: str
    n: int


def parse_metrics(names: Iterable[str]) -> list[MetricSpec]:
    """'fid10k,swd' (split already) -> specs, in order, duplicates dropped; UsageError naming a bad one."""
    specs: dict[str, MetricSpec] = {}
    for raw in names:
        name = raw.strip().lower()
        match = _NAME.match(name)
        counted = match is not None and (match.group(2) or (match.group(1) in DEFAULT_COUNT and not match.group(3)))
        if not counted:
            raise UsageError(f"--metrics: unknown metric {raw!r}; use fid<N>, kid<N>, pr<N>, is<N>, swd[<N>] or "
                             "msssim[<N>] with N a count, k for thousands (e.g. fid10k,kid10k,swd,msssim)")
        kind, number, kilo = match.groups()
        n = DEFAULT_COUNT[kind] if number is None else int(number) * (1000 if kilo else 1)
        if n < MIN_COUNT.get(kind, 1):
            raise UsageError(f"--metrics: {raw!r} asks for {n}; {kind} needs at least {MIN_COUNT.get(kind, 1)}")
        specs.setdefault(name, MetricSpec(name, kind, n))
    if not specs:
        raise UsageError("--metrics: name at least one metric, e.g. fid10k")
    return list(specs.values())


@dataclass
class MetricResult:
    """One metric of one generator: `results` holds its values under the names the logs use
    (fid10k; kid10k, kid10k_std; pr10k_precision, pr10k_recall; is10k, is10k_std; swd, swd/64, ...)."""

    metric: str
    results: dict[str, float]
    n: list[int]  # images read: [generated, real] (IS: [generated]; MS-SSIM: [pairs])
    protocol: str | None  # the Inception resize protocol; None where no Inception is involved
    weights: str | None  # fingerprint of the Inception weights
    seconds: float  # wall time, shared passes (generation, Inception) included in each metric they serve


class Evaluator:
    """Scores generators against one pyramid, keeping each resolution's real side for the next generator.

    The Inception weights are resolved at once, so a missing file (or the classifier IS needs) stops before
    any work with one line naming what to install or where to put it.
    """

    def __init__(self, specs: list[MetricSpec], data: Path, device: torch.device | str, seed: int = 0,
                 weights: Path | None = None, protocol: str = "ttur", batch_size: int = 64,
                 use_cache: bool = True, progress: Callable[[str, int], Callable[[int], None]] | None = None):
        from progan_cli.metrics.features import Extractor
        from progan_cli.metrics.sources import PyramidSource

        self.specs, self.data, self.device, self.seed = specs, Path(data), device, seed
        self.batch_size, self.use_cache = batch_size, use_cache
        count = PyramidSource(self.data, None).count  # a missing or foreign file fails now
        for spec in specs:
            if spec.kind in ("fid", "kid", "pr") and count < MIN_COUNT[spec.kind]:
                raise DataError(f"{self.data} holds {count} images; {spec.name} needs at least "
                                f"{MIN_COUNT[spec.kind]} real ones")
        inception = [s for s in specs if s.kind in INCEPTION_KINDS]
        self.extractor = (Extractor(weights, protocol, device, batch_size, progress=progress,
                                    need_classifier=any(s.kind == "is" for s in specs)) if inception else None)
        # Real pool3 features are needed by KID and PR; FID alone reads only (cached) statistics.
        self._need_real_features = any(s.kind in ("kid", "pr") for s in specs)
        self._real_features: dict[int, Features] = {}
        self._real_stats: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self._swd_reals: dict[tuple[int, int], SetDescriptors] = {}  # the reals' SWD descriptors at (res, n)

    def protocol_of(self, spec: MetricSpec) -> str | None:
        return self.extractor.protocol if spec.kind in INCEPTION_KINDS else None

    def weights_of(self, spec: MetricSpec) -> str | None:
        return self.extractor.weights.fingerprint if spec.kind in INCEPTION_KINDS else None

    @staticmethod
    def skip_reason(spec: MetricSpec, res: int) -> str | None:
        """Why `spec` cannot score a generator drawing res x res images, or None."""
        least = MIN_RES.get(spec.kind, 0)
        return f"{DISPLAY[spec.kind]} needs at least {least}x{least} images" if res < least else None

    def evaluate(self, G: torch.nn.Module, res: int, specs: list[MetricSpec] | None = None,
                 label: str = "G_ema") -> tuple[list[MetricResult], dict[str, str]]:
        """Score G (drawing res x res images) on `specs` (default: all): the results, in the order of the
        specs, and {name: reason} for the ones that do not apply at this resolution."""
        specs = self.specs if specs is None else specs
        skipped = {s.name: r for s in specs if (r := self.skip_reason(s, res)) is not None}
        todo = [s for s in specs if s.name not in skipped]
        inception = [s for s in todo if s.kind in INCEPTION_KINDS]
        done = {r.metric: r for r in self._inception(G, res, inception, label)} if inception else {}
        for spec in todo:
            if spec.kind == "swd":
                done[spec.name] = self._swd(G, res, spec, label)
            elif spec.kind == "msssim":
                done[spec.name] = self._msssim(G, res, spec, label)
        return [done[s.name] for s in todo], skipped

    # ------------------------------------------------------------------------------------------------------

    def _fakes(self, G: torch.nn.Module, res: int, n: int, label: str):
        from progan_cli.metrics.sources import GeneratorSource

        return GeneratorSource(G, res, n, self.device, self.seed, label)

    def _reals(self, res: int):
        from progan_cli.metrics.sources import PyramidSource

        return PyramidSource(self.data, res)

    def _real_pool3(self, res: int) -> np.ndarray:
        if res not in self._real_features:
            self._real_features[res] = self.extractor.features(self._reals(res), use_cache=self.use_cache)
        return self._real_features[res].pool3

    def _real_fid_stats(self, res: int) -> tuple[np.ndarray, np.ndarray, int]:
        from progan_cli.metrics.fid import source_stats, statistics

        if res not in self._real_stats:
            if self._need_real_features:
                pool3 = self._real_pool3(res)
                self._real_stats[res] = (*statistics(pool3), len(pool3))
            else:
                stats = source_stats(self._reals(res), self.extractor, self.use_cache)[0]
                self._real_stats[res] = (stats.mu, stats.sigma, stats.count)
        return self._real_stats[res]

    def _inception(self, G: torch.nn.Module, res: int, specs: list[MetricSpec], label: str) -> list[MetricResult]:
        """FID, KID, PR and IS from one Inception pass over the largest N they ask for.

        FID is `compute_fid`'s (fid.statistics and fid.frechet_distance; the reals' statistics through
        fid.source_stats and its cache), taken from the shared features rather than a pass of its own."""
        from progan_cli.metrics.fid import frechet_distance, statistics
        from progan_cli.metrics.inception_score import inception_score
        from progan_cli.metrics.kid import compute_kid
        from progan_cli.metrics.precision_recall import compute_precision_recall

        start = time.perf_counter()
        fake = self.extractor.features(self._fakes(G, res, max(s.n for s in specs), label),
                                       logits=any(s.kind == "is" for s in specs), use_cache=False)
        shared = time.perf_counter() - start
        out = []
        for spec in specs:
            start = time.perf_counter()
            pool3 = fake.pool3[:spec.n]
            if spec.kind == "fid":
                mu, sigma, n_real = self._real_fid_stats(res)
                results, n = {spec.name: frechet_distance(*statistics(pool3), mu, sigma)}, [len(pool3), n_real]
            elif spec.kind == "kid":
                real = self._real_pool3(res)
                kid = compute_kid(pool3, real, seed=self.seed, device=self.device)
                results, n = {spec.name: kid["kid"], f"{spec.name}_std": kid["kid_std"]}, [len(pool3), len(real)]
            elif spec.kind == "pr":
                real = self._real_pool3(res)[:spec.n]
                pr = compute_precision_recall(real, pool3, device=self.device)
                results = {f"{spec.name}_precision": pr["precision"], f"{spec.name}_recall": pr["recall"]}
                n = [len(pool3), len(real)]
            else:
                mean, std = inception_score(fake.logits[:spec.n], IS_SPLITS)
                results, n = {spec.name: mean, f"{spec.name}_std": std}, [len(pool3)]
            out.append(MetricResult(spec.name, results, n, self.protocol_of(spec), self.weights_of(spec),
                                    round(shared + time.perf_counter() - start, 3)))
        return out

    def _swd(self, G: torch.nn.Module, res: int, spec: MetricSpec, label: str) -> MetricResult:
        """SWD on min(N, level size) images of each set, read batch by batch; the reals' descriptors are kept
        for the current resolution only (resolutions only grow during training)."""
        from progan_cli.metrics.swd import SWDSampler, describe, swd_batch_size, swd_distance

        start = time.perf_counter()
        reals = self._reals(res)
        count = min(spec.n, reals.count)
        batch, sampler = swd_batch_size(res), SWDSampler(self.seed)
        if (res, count) not in self._swd_reals:
            for old in [key for key in self._swd_reals if key[0] != res]:
                del self._swd_reals[old]
            self._swd_reals[(res, count)] = describe(reals.batches(batch), count, 0, sampler, self.device)
        fakes = self._fakes(G, res, count, label)
        swd = swd_distance(self._swd_reals[(res, count)], describe(fakes.batches(batch), count, 1, sampler,
                                                                    self.device))
        results = {spec.name: swd["mean"], **{f"{spec.name}/{lvl}": v for lvl, v in swd["levels"].items()}}
        return MetricResult(spec.name, results, [count, count], None, None, round(time.perf_counter() - start, 3))

    def _msssim(self, G: torch.nn.Module, res: int, spec: MetricSpec, label: str) -> MetricResult:
        from progan_cli.metrics.msssim import compute_msssim

        start = time.perf_counter()
        fakes = self._fakes(G, res, 2 * spec.n, label)
        out = compute_msssim(fakes.batches(self.batch_size), spec.n)
        return MetricResult(spec.name, {spec.name: out["msssim"]}, [out["pairs"]], None, None,
                            round(time.perf_counter() - start, 3))


# ----------------------------------------------------------------------------------------------------------
# `progan eval`: every checkpoint of runs, metrics.jsonl in each run folder, resumable.


@dataclass
class RunTarget:
    """A run folder and the checkpoints of it to score, with the pyramid its reals come from."""

    run_dir: Path
    checkpoints: list[Path]
    data: Path


@dataclass
class EvalReport:
    """What `progan eval` found and did: one row per checkpoint (old and new values), lines written."""

    rows: list[dict] = field(default_factory=list)
    written: int = 0


def select_checkpoints(path: Path, every: int | None = None) -> tuple[Path, list[Path]]:
    """(run folder, checkpoints to score): a checkpoint file alone, or a run's checkpoints oldest first
    (every `every`-th counting from the first, and always the newest)."""
    from progan_cli.checkpoints import CHECKPOINT_DIR, list_checkpoints

    path = Path(path)
    if path.is_file():
        return (path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent), [path]
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file")
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path} has no checkpoints in {CHECKPOINT_DIR}/ (is it a `progan train` run folder?)")
    if every is None:
        return path, found
    if every < 1:
        raise UsageError(f"--every must be at least 1, got {every}")
    return path, [p for i, p in enumerate(found) if i % every == 0 or i == len(found) - 1]


def run_data(run_dir: Path, checkpoint: Path, override: Path | None) -> Path:
    """The pyramid a run trained on (its config.json, else the checkpoint's config), or --data."""
    from progan_cli.checkpoints import load_checkpoint

    if override is not None:
        data, origin = Path(override), "--data"
    else:
        config = run_dir / "config.json"
        saved = json.loads(config.read_text()) if config.is_file() else load_checkpoint(checkpoint)["config"]
        data, origin = Path(saved["data"]), f"{run_dir}'s config"
    if not data.is_file():
        hint = "" if override is not None else "; pass the pyramid with --data PATH.h5"
        raise DataError(f"{data} (from {origin}) is not a file{hint}")
    return data


def read_records(path: Path) -> list[dict]:
    """The lines of a metrics.jsonl (none when it does not exist)."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{path}:{number} is not a JSON line; fix or remove it") from None
    return records


def write_records(path: Path, records: list[dict]) -> None:
    """Rewrite metrics.jsonl atomically: an interrupted eval leaves the file as it was after its last metric."""
    from progan_cli.files import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _done_key(record: dict) -> tuple:
    """What makes two lines the same measurement: resumed evals skip checkpoint+metric pairs already there."""
    return record["checkpoint"], record["metric"], record.get("protocol"), record.get("seed")


def evaluate_runs(paths: list[Path], specs: list[MetricSpec], *, every: int | None = None,
                  data: Path | None = None, device: torch.device | str = "cpu", seed: int = 0,
                  weights: Path | None = None, protocol: str = "ttur", batch_size: int = 64,
                  use_cache: bool = True, progress: Callable[[str, int], Callable[[int], None]] | None = None,
                  on_result: Callable[[Path, Path, MetricResult], None] | None = None) -> EvalReport:
    """Score the checkpoints of each run on `specs`, appending to RUN/metrics.jsonl (one line per checkpoint
    and metric) and skipping the pairs already there. Every input is checked before the first metric."""
    from progan_cli.checkpoints import checkpoint_kimg
    from progan_cli.metrics.sources import GeneratorSource

    targets = []
    for path in paths:
        run_dir, checkpoints = select_checkpoints(path, every)
        targets.append(RunTarget(run_dir, checkpoints, run_data(run_dir, checkpoints[-1], data)))
    evaluators: dict[Path, Evaluator] = {}
    for target in targets:
        key = target.data.resolve()
        if key not in evaluators:
            evaluators[key] = Evaluator(specs, key, device, seed, weights, protocol, batch_size, use_cache, progress)
    report = EvalReport()
    for target in targets:
        evaluator = evaluators[target.data.resolve()]
        log = target.run_dir / METRICS_FILE
        records = read_records(log)
        for ckpt in target.checkpoints:
            wanted = {(ckpt.name, s.name, evaluator.protocol_of(s), seed): s for s in specs}
            have = {_done_key(r): r for r in records if _done_key(r) in wanted}
            row = {"run": str(target.run_dir), "checkpoint": ckpt.name, "kimg": checkpoint_kimg(ckpt),
                   "res": next((r["res"] for r in have.values()), None), "results": {}, "skipped": {}}
            todo = [s for k, s in wanted.items() if k not in have]
            if todo:
                source = GeneratorSource.from_checkpoint(ckpt, 1, device, seed)
                row["res"] = source.res
                results, row["skipped"] = evaluator.evaluate(source.G, source.res, todo, label=str(ckpt))
                for result in results:
                    record = {"checkpoint": ckpt.name, "kimg": row["kimg"], "res": source.res,
                              "metric": result.metric, "results": result.results, "n": result.n,
                              "protocol": result.protocol, "weights": result.weights, "seed": seed,
                              "data": str(evaluator.data), "seconds": result.seconds,
                              "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                    records.append(record)
                    have[_done_key(record)] = record
                    write_records(log, records)
                    report.written += 1
                    if on_result is not None:
                        on_result(target.run_dir, ckpt, result)
            for spec in specs:  # old and new values, in the order the metrics were named
                found = have.get((ckpt.name, spec.name, evaluator.protocol_of(spec), seed))
                if found is not None:
                    row["results"].update(found["results"])
            report.rows.append(row)
    return report
