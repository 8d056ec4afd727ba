"""Inception features of image batches, as each protocol feeds the network, and the on-disk cache.

One pass over a source (`Extractor.features`) yields pool3 and, when IS is asked, the logits: FID, IS, KID and
precision/recall all read that one pass. The cache keeps FID statistics (`cached_arrays`, used by fid.py) and
the features of stored image sets, keyed by their content, the protocol and the weights' fingerprint.

Protocols (how uint8 images become the network's 299x299 input):
- `ttur` (default): the original TF implementation (bioinf-jku/TTUR) as torch-fidelity reproduces it: float
  0..255, TF1 bilinear resize (align_corners=False, no half-pixel offset), then (x - 128) / 128.
- `pytorch-fid`: mseitzer/pytorch-fid: x / 255, torch bilinear resize (half-pixel centres), then 2x - 1.
At 64 -> 299 the two resizes alone move FID by ~1%, which is why the protocol is part of every cache key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from progan_cli.devices import tf32
from progan_cli.files import atomic_write, cache_dir
from progan_cli.metrics.inception import FIDInception

PROTOCOLS = ("ttur", "pytorch-fid")
INCEPTION_SIZE = 299
FEATURES_VERSION = "features-v1"


def tf1_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 `tf.image.resize_bilinear(align_corners=False)`: source = dst * (in / out), no half-pixel offset.

    TF computes top = tl + (tr - tl) * dx, bottom = bl + (br - bl) * dx, out = top + (bottom - top) * dy in
    float32; interpolating the rows first and then the columns does exactly these operations (bit-equal) while
    touching each input row once.
    """
    def taps(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n_in / size,
                                                                                     dtype=torch.float32)
        lo = src.long()
        return lo, (lo + 1).clamp_max(n_in - 1), src - lo.float()

    lo, hi, dx = taps(x.shape[3])
    left = x.index_select(3, lo)
    rows = left + (x.index_select(3, hi) - left) * dx
    lo, hi, dy = taps(x.shape[2])
    top = rows.index_select(2, lo)
    return top + (rows.index_select(2, hi) - top) * dy.view(-1, 1)


def preprocess(images: torch.Tensor, protocol: str) -> torch.Tensor:
    """uint8 NCHW (any size) -> the normalised float32 299x299 input of the protocol, channels_last."""
    x = images.float()
    if protocol == "ttur":
        x = (tf1_resize_bilinear(x, INCEPTION_SIZE) - 128) / 128
    elif protocol == "pytorch-fid":
        x = F.interpolate(x / 255, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    return x.contiguous(memory_format=torch.channels_last)


def extract(model: FIDInception, batches: Iterable[torch.Tensor], protocol: str, logits: bool = False,
            progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """pool3 features (N, 2048) of every image the batches yield, and the 1008 unbiased logits if asked.

    Both float32, as the network computes them (every metric widens them to float64 itself; keeping float32
    halves the memory and the cache of large real sets and loses nothing). Batches are uint8 NCHW on any
    device; they move to the model's device before the float conversion (4x less to copy).
    """
    device = next(model.parameters()).device
    pools, heads = [], []
    with torch.inference_mode(), tf32(False):  # IEEE fp32 on CUDA too (cuDNN allows TF32 by default)
        for batch in batches:
            pool3 = model(preprocess(batch.to(device, non_blocking=True), protocol))
            pools.append(pool3.float().cpu())
            if logits:
                heads.append(model.logits(pool3).float().cpu())
            if progress is not None:
                progress(len(batch))
    feats = torch.cat(pools).numpy() if pools else np.zeros((0, 2048), np.float32)
    return feats, (torch.cat(heads).numpy() if logits and heads else None)


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def cached_arrays(key: str | None, compute: Callable[[], dict[str, np.ndarray]],
                  use_cache: bool = True) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays stored under `key`, else compute() and store them atomically. Returns (arrays, was_hit).

    key None (content that cannot be keyed, e.g. freshly generated images) or use_cache False: compute only.
    """
    path = cache_dir() / "stats" / f"{key}.npz" if key else None
    if use_cache and path is not None and path.is_file():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}, True
        except (OSError, ValueError):
            pass  # a damaged entry is recomputed and replaced
    arrays = compute()
    if use_cache and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return arrays, False


@dataclass(frozen=True)
class Features:
    """What one Inception pass over a source yields: pool3 (N, 2048) float32 and, when asked, the 1008 logits.

    FID takes the mean and covariance of pool3, KID and precision/recall pool3 itself, IS the logits; the
    first k rows are the features of the source's first k images.
    """

    pool3: np.ndarray
    logits: np.ndarray | None = None


class Extractor:
    """One Inception network, one protocol, one device: features of any image source.

    The weights are resolved at once (cheap, and errors surface before any work) but loaded only when a source
    actually needs the network, so cache hits and stored statistics cost no model load.
    """

    def __init__(self, weights: Path | None = None, protocol: str = "ttur", device: torch.device | str = "cpu",
                 batch_size: int = 64, need_classifier: bool = False,
                 progress: Callable[[str, int], Callable[[int], None]] | None = None):
        from progan_cli.errors import UsageError
        from progan_cli.metrics.inception import resolve_weights

        if protocol not in PROTOCOLS:
            raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if batch_size <= 0:
            raise UsageError(f"--batch-size must be positive, got {batch_size}")
        self.weights = resolve_weights(weights, need_classifier=need_classifier)
        self.protocol, self.device, self.batch_size, self.progress = protocol, device, batch_size, progress
        self._model: FIDInception | None = None

    @property
    def model(self) -> FIDInception:
        if self._model is None:
            from progan_cli.metrics.inception import load_inception

            self._model = load_inception(self.weights, self.device)
        return self._model

    def run(self, source, logits: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """pool3 features (and logits) of an ImageSource (progan_cli.metrics.sources)."""
        tick = self.progress(source.label, source.count) if self.progress else None
        return extract(self.model, source.batches(self.batch_size), self.protocol, logits, tick)

    def features(self, source, logits: bool = False, use_cache: bool = True) -> Features:
        """One Inception pass over an ImageSource, serving every metric of it (FID, IS, KID, precision/recall).

        Stored images (folder, pyramid level) are cached on disk under their content, the protocol and the
        weights' fingerprint, so a real set is read by Inception once for all checkpoints and metrics.
        Generated images (no content key) are never cached.
        """
        content = source.content_key() if use_cache else None
        key = (cache_key(FEATURES_VERSION, content, self.protocol, self.weights.fingerprint,
                         "logits" if logits else "pool3") if content else None)

        def compute() -> dict[str, np.ndarray]:
            pool3, heads = self.run(source, logits)
            return {"pool3": pool3} if heads is None else {"pool3": pool3, "logits": heads}

        arrays, _ = cached_arrays(key, compute, use_cache)
        return Features(arrays["pool3"], arrays.get("logits"))
