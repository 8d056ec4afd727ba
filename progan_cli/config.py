"""Everything that defines a training run, in one frozen dataclass; a run's `config.json` is one.

Defaults are the official code's `config.py` preset for one GPU (tkarras/progressive_growing_of_gans,
"v2" preset): 600 kimg stable + 600 kimg fade per resolution, the per-resolution minibatch table and
Adam(lr 0.001, betas (0, 0.99), eps 1e-8) with lr 0.0015 at 1024x1024.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from progan_cli.errors import UsageError
from progan_cli.files import atomic_write
from progan_cli.resolutions import MAX_RESOLUTION, MIN_RESOLUTION, is_resolution

# Official per-resolution minibatch (config.py, sched.minibatch_dict) and learning rate overrides.
DEFAULT_MINIBATCH = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}
DEFAULT_LR = {1024: 0.0015}
LOSS_NAMES = ("wgan-gp", "logistic", "lsgan")
PRECISIONS = ("fp32", "tf32", "bf16")
# Variants of the networks that published ProGANs were trained with (networks/layers.py, generator.py).
MBSTD_VARIANTS = ("official", "gan-zoo")
STEM_BIASES = ("channel", "position")
_ALL_RESOLUTIONS = tuple(r for r in range(MIN_RESOLUTION, MAX_RESOLUTION + 1) if is_resolution(r))  # 4, ..., 1024
# Config fields whose command-line option is not simply --<field-name-with-dashes>.
_OPTION_NAMES = {"keep_checkpoints": "--keep", "data": "DATA"}
# Fields with no command-line option (set from Python or in a config.json): messages name the field.
_FIELD_ONLY = ("mbstd_group_size", "mbstd_variant", "stem_bias", "d_fused", "minibatch_default", "minibatch_repeats",
               "lr_overrides", "adam_betas", "adam_eps", "reset_adam")


@dataclass(frozen=True)
class TrainConfig:
    """All options of `progan train`. `total_kimg` None means: reach the target, then one stable phase."""

    data: str  # the pyramid file (absolute path)
    target: int = 128  # final resolution
    # Networks (paper table 2): nf(stage) = min(fmap_base / 2^stage, fmap_max).
    fmap_base: int = 8192
    fmap_max: int = 512
    latent_size: int = 512
    mbstd_group_size: int = 4
    # Variants for networks imported from published files (progan_cli/formats); the defaults are the official
    # code's own: the minibatch-stddev formula, one stem bias per channel, D's conv and pool fused.
    mbstd_variant: str = "official"  # or "gan-zoo" (pytorch_GAN_zoo's miniBatchStdDev)
    stem_bias: str = "channel"  # or "position" (pytorch_GAN_zoo's per-pixel formatLayer bias)
    d_fused: bool = True  # False: pool(lrelu(conv)), as the released 2018 networks and pytorch_GAN_zoo
    # Schedule (official train.py TrainingSchedule).
    stable_kimg: float = 600.0
    fade_kimg: float = 600.0
    total_kimg: float | None = None
    minibatch: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_MINIBATCH))
    minibatch_default: int = 16  # resolutions missing from `minibatch`
    minibatch_repeats: int = 4  # minibatches between schedule updates (official)
    lr: float = 0.001
    lr_overrides: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_LR))
    adam_betas: tuple[float, float] = (0.0, 0.99)
    adam_eps: float = 1e-8
    reset_adam: bool = True  # when floor(lod) or ceil(lod) changes (official reset_opt_for_new_lod)
    # G_ema, updated every step. The paper's fixed decay 0.999 per step (`ema_decay`) is a half-life of ~693
    # steps: ~89 kimg at minibatch 128, so short runs show a G_ema that is still mostly the initial network.
    # By default the half-life is set in images with a ramp-up instead (stylegan2-ada's ema_kimg, ema_rampup):
    # the same as the paper's from 128x128 on (minibatch 16: ~11 kimg), never longer than a fraction of the
    # images seen so far. See docs/train.md and `ema_beta` in training/step.py.
    ema_kimg: float | None = 10.0  # half-life of G_ema in thousands of real images
    ema_rampup: float | None = 0.05  # half-life at most this fraction of the images shown; None: no ramp-up
    ema_decay: float | None = None  # the paper's fixed per-step decay instead (0.999); excludes ema_kimg
    # Loss and data.
    loss: str = "wgan-gp"
    mirror: bool = True
    # Engine.
    device: str = "auto"  # CUDA when a GPU is visible, else the CPU
    precision: str = "fp32"
    seed: int = 0
    workers: int = 2
    # Bookkeeping: a tick is `tick_kimg` real images; maintenance (log, samples, checkpoints) once per tick.
    tick_kimg: float = 20.0
    snapshot_ticks: int = 10  # a checkpoint every this many ticks
    keep_checkpoints: int = 5
    grid: tuple[int, int] | None = None  # (columns, rows) of sample grids; None: fit ~1920x1080 at target
    metrics: tuple[str, ...] = ()
    metrics_ticks: int = 10
    init: str | None = None  # the network file a fine-tuning run started from (--init), absolute

    def __post_init__(self) -> None:
        """Refuse nonsense at the boundary, naming the option (a bad value otherwise surfaces mid-run as
        a torch traceback: Adam's "Invalid learning rate", a ZeroDivisionError in the batch split, ...)."""
        _check_types(self)
        _check(is_resolution(self.target), f"--target {self.target} is not a power of two between 4 and 1024")
        _check(self.loss in LOSS_NAMES, f"--loss {self.loss!r} is not one of {', '.join(LOSS_NAMES)}")
        _check(self.precision in PRECISIONS, f"--precision {self.precision!r} is not fp32, tf32 or bf16")
        _check(self.mbstd_variant in MBSTD_VARIANTS,
               f"mbstd_variant {self.mbstd_variant!r} is not one of {', '.join(MBSTD_VARIANTS)}")
        _check(self.stem_bias in STEM_BIASES, f"stem_bias {self.stem_bias!r} is not one of {', '.join(STEM_BIASES)}")
        for name in ("stable_kimg", "fade_kimg", "total_kimg", "tick_kimg", "lr", "adam_eps"):
            value = getattr(self, name)
            _check(value is None or (math.isfinite(value) and value > 0),
                   f"{_option(name)} {value} must be a positive number")
        _check(round(self.tick_kimg * 1000) >= 1, f"--tick-kimg {self.tick_kimg} is less than one image")
        for name in ("fmap_base", "fmap_max", "latent_size", "minibatch_default", "minibatch_repeats",
                     "snapshot_ticks", "keep_checkpoints", "metrics_ticks", "mbstd_group_size"):
            _check(getattr(self, name) >= 1, f"{_option(name)} {getattr(self, name)} must be 1 or more"
                   + (" (1 turns the minibatch-stddev layer off)" if name == "mbstd_group_size" else ""))
        _check(self.workers >= 0, f"--workers {self.workers} must be 0 (read in the main process) or more")
        _check(0 <= self.seed < 2**63, f"--seed {self.seed} must be between 0 and 2^63 - 1")
        _check(self.ema_kimg is None or (math.isfinite(self.ema_kimg) and self.ema_kimg >= 0),
               f"--ema-kimg {self.ema_kimg} must be 0 or more (0: G_ema = G)")
        _check(self.ema_rampup is None or (math.isfinite(self.ema_rampup) and self.ema_rampup > 0),
               f"--ema-rampup {self.ema_rampup} must be positive")
        _check(self.ema_decay is None or 0.0 <= self.ema_decay < 1.0,
               f"--ema-decay {self.ema_decay} must be in [0, 1) (0.999 in the paper)")
        _check((self.ema_kimg is None) != (self.ema_decay is None),
               "give the G_ema horizon one way: --ema-kimg (images) or --ema-decay (per step), not both")
        _check(len(self.adam_betas) == 2 and _numbers(self.adam_betas) and all(0.0 <= b < 1.0 for b in self.adam_betas),
               f"adam_betas {self.adam_betas} must be two numbers in [0, 1)")
        for name, table, whole in (("--minibatch", self.minibatch, True), ("lr_overrides", self.lr_overrides, False)):
            for res, value in table.items():
                _check(res in _ALL_RESOLUTIONS, f"{name}: {res!r} is not a resolution (4, 8, ..., 1024)")
                _check(_numbers([value], whole) and math.isfinite(value) and value > 0,
                       f"{name} at {res}x{res}: {value!r} must be a positive {'whole ' if whole else ''}number")
        _check(self.grid is None or (len(self.grid) == 2 and _numbers(self.grid, True) and min(self.grid) >= 1),
               f"--grid {self.grid} must be two positive numbers, columns and rows")
        _check(all(isinstance(m, str) for m in self.metrics), f"--metrics {self.metrics} must be names")

    @property
    def resolutions(self) -> list[int]:
        """4, 8, ..., target."""
        return [2**k for k in range(2, self.target.bit_length())]

    @property
    def end_kimg(self) -> float:
        """Where training stops: `total_kimg`, or the kimg at which the target has had one stable phase."""
        if self.total_kimg is not None:
            return self.total_kimg
        growths = len(self.resolutions) - 1
        return growths * (self.stable_kimg + self.fade_kimg) + self.stable_kimg

    def minibatch_at(self, res: int) -> int:
        return self.minibatch.get(res, self.minibatch_default)

    def lr_at(self, res: int) -> float:
        return self.lr_overrides.get(res, self.lr)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # JSON: int keys become strings and tuples lists; from_dict undoes both.
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"unknown config keys {sorted(unknown)} (written by a newer progan?)")
        d = dict(d)
        if "ema_decay" in d and "ema_kimg" not in d:  # written before ema_kimg existed: the paper's fixed decay
            d.update(ema_kimg=None, ema_rampup=None)
        for key in ("minibatch", "lr_overrides"):
            if key in d:
                d[key] = {int(k): v for k, v in d[key].items()}
        for key in ("adam_betas", "grid", "metrics"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def save(self, path: Path) -> None:
        """Write as JSON, atomically."""
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# The fields that shape G and D: a run fine-tuning a network (--init) takes them from the network.
ARCHITECTURE = ("target", "fmap_base", "fmap_max", "latent_size", "mbstd_group_size", "mbstd_variant", "stem_bias",
                "d_fused")

# Options a resumed run may change: where and how it runs, how long, and its bookkeeping. Everything else
# (networks, schedule, loss, seed) defines the run and stays as the checkpoint has it.
RESUMABLE = ("data", "total_kimg", "device", "precision", "workers", "tick_kimg", "snapshot_ticks",
             "keep_checkpoints", "metrics", "metrics_ticks")


def resumed_config(saved: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The config of a resumed run: `saved` with the options given again on the command line."""
    fixed = sorted(k for k, v in overrides.items() if k not in RESUMABLE and v != getattr(saved, k))
    if fixed:
        names = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise UsageError(f"{names} cannot change when resuming (the run was made with other values); "
                         "start a new run instead")
    return saved.replace(**overrides)


def parse_minibatch(text: str) -> dict[int, int]:
    """`--minibatch` as `64` (every resolution) or `4:256,8:128` (named resolutions, others keep defaults)."""
    try:
        if ":" not in text:
            n = int(text)
            return {res: n for res in DEFAULT_MINIBATCH}
        pairs = (item.split(":") for item in text.split(",") if item.strip())
        return {**DEFAULT_MINIBATCH, **{int(r): int(n) for r, n in pairs}}
    except ValueError:
        raise UsageError(f"--minibatch {text!r}: give a number or RES:N pairs like 4:256,8:128") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _option(name: str) -> str:
    """How the user set a field: its --option, or the field's own name for those only Python sets."""
    return name if name in _FIELD_ONLY else _OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


def _numbers(values: Any, whole: bool = False) -> bool:
    """Every value an int (whole) or an int or float; bools, which Python counts as ints, are not numbers here."""
    kinds = int if whole else (int, float)
    return all(isinstance(v, kinds) and not isinstance(v, bool) for v in values)


_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text", dict: "a table",
               tuple: "a tuple"}


@functools.cache
def _field_kinds() -> dict[str, list[type]]:
    """Each TrainConfig field's allowed types, from its annotation (`float | None` -> [float, NoneType])."""
    kinds = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds[name] = [typing.get_origin(a) or a for a in (typing.get_args(hint) if union else (hint,))]
    return kinds


def _check_types(cfg: TrainConfig) -> None:
    """Values of the declared kind (from a hand-edited config.json or a Python caller): 'lr': "0.1" is refused
    here, naming the field, instead of failing as a TypeError deep inside a comparison."""
    for name, kinds in _field_kinds().items():
        value = getattr(cfg, name)
        if value is None and type(None) in kinds:
            continue
        kind = next(k for k in kinds if k is not type(None))
        if kind in (int, float):  # an int is a fine float (--lr 1)
            ok = _numbers([value], whole=kind is int)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise UsageError(f"{_option(name)} {value!r} is not {_KIND_NAMES[kind]}")
