"""Writers of synthetic network files in the exact formats of the published ProGANs, with seeded random weights.

Why: the real files (NVIDIA's `karras2018iclr-*.pkl`, pytorch_GAN_zoo's `*.pth`) are hundreds of MB, licensed,
and not downloadable in tests; an importer tested only on files it wrote itself tests nothing. These writers
reproduce what the real files contain byte-level where it matters to a loader:

- official pickles: a tuple (G, D, Gs), each item the global `tfutil.Network` built with NEWOBJ + BUILD from the
  dict `Network.__getstate__` returns, arrays referencing numpy 1.x's module names
  (`numpy.core.multiarray._reconstruct`, `numpy.dtype`, `numpy.ndarray`), protocol 4 as the official
  `misc.save_pkl` (HIGHEST_PROTOCOL on Python 3.6) wrote them, 2 and 3 also possible;
- hostile pickles (a payload where a Network would be; a `build_module_src` that acts when exec()'d), for the
  safe loader's tests;
- zoo checkpoints: torch.save of {'config': models.utils.config.BaseConfig, 'netG', 'netD', 'avgG'}, in the
  zip or the legacy (pre-1.6) format.

Nothing is left registered in sys.modules after writing (no fake `tfutil`, no fake `models`), so a loader under
test cannot succeed by importing them. Nothing here imports progan_cli.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import pickle
import shlex
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np

# The real files carry the whole official networks.py (CC BY-NC) here; a short stand-in does for the format.
DEFAULT_BUILD_MODULE_SRC = '''"""Synthetic stand-in for the official networks.py (a real pickle holds all of it)."""
import numpy as np
import tensorflow as tf


def G_paper(latents_in, labels_in, **kwargs):
    raise NotImplementedError("synthetic test network")


def D_paper(images_in, **kwargs):
    raise NotImplementedError("synthetic test network")
'''


# ----------------------------------------------------------------------------------------------------------
# Official variables

def _nf(stage: int, fmap_base: int, fmap_max: int) -> int:
    """The official width rule with fmap_decay 1: min(int(fmap_base / 2**stage), fmap_max)."""
    return min(int(fmap_base / (2.0 ** stage)), fmap_max)


def official_variables(net: str, resolution: int, *, fmap_base: int, fmap_max: int, latent_size: int,
                       num_channels: int = 3, label_size: int = 0, fused: bool = True, mbstd: bool = True,
                       lod: float = 0.0, seed: int = 0, lod_scalar: bool = False) -> list[tuple[str, np.ndarray]]:
    """The variables of G_paper ("G") or D_paper ("D") in the order the template graph creates them, with the
    official names and shapes: weights N(0, 1) as use_wscale initialises them, biases random and non-zero (so a
    dropped or misplaced bias changes the output), `lod` a float32 0-d array (or, with lod_scalar, a numpy
    float32 scalar, which is what TF's session.run returns for a scalar variable).

    The block of resolution 2^r uses nf(r - 1); latent_size is ignored for D, mbstd for G.
    """
    if net not in ("G", "D"):
        raise ValueError(f"net must be 'G' or 'D', not {net!r}")
    r_log2 = int(np.log2(resolution))
    assert resolution == 2 ** r_log2 and resolution >= 4
    rng = np.random.default_rng(seed)

    def nf(stage):
        return _nf(stage, fmap_base, fmap_max)

    out: list[tuple[str, np.ndarray]] = [("lod", np.float32(lod) if lod_scalar else np.array(lod, np.float32))]

    def layer(scope, wshape, bias_len):
        out.append((scope + "/weight", rng.standard_normal(wshape).astype(np.float32)))
        out.append((scope + "/bias", (0.3 * rng.standard_normal(bias_len)).astype(np.float32)))

    if net == "G":
        layer("4x4/Dense", (latent_size + label_size, 16 * nf(1)), nf(1))
        layer("4x4/Conv", (3, 3, nf(1), nf(1)), nf(1))
        layer(f"ToRGB_lod{r_log2 - 2}", (1, 1, nf(1), num_channels), num_channels)
        for res in range(3, r_log2 + 1):
            scope, cin, cout = f"{2 ** res}x{2 ** res}", nf(res - 2), nf(res - 1)
            if fused:
                layer(scope + "/Conv0_up", (3, 3, cout, cin), cout)  # the transposed conv's [k, k, out, in]
            else:
                layer(scope + "/Conv0", (3, 3, cin, cout), cout)
            layer(scope + "/Conv1", (3, 3, cout, cout), cout)
            layer(f"ToRGB_lod{r_log2 - res}", (1, 1, cout, num_channels), num_channels)
    else:
        layer("FromRGB_lod0", (1, 1, num_channels, nf(r_log2 - 1)), nf(r_log2 - 1))
        for res in range(r_log2, 2, -1):
            scope = f"{2 ** res}x{2 ** res}"
            layer(scope + "/Conv0", (3, 3, nf(res - 1), nf(res - 1)), nf(res - 1))
            layer(scope + ("/Conv1_down" if fused else "/Conv1"), (3, 3, nf(res - 1), nf(res - 2)), nf(res - 2))
            layer(f"FromRGB_lod{r_log2 - res + 1}", (1, 1, num_channels, nf(res - 2)), nf(res - 2))
        layer("4x4/Conv", (3, 3, nf(1) + (1 if mbstd else 0), nf(1)), nf(1))
        layer("4x4/Dense0", (16 * nf(1), nf(0)), nf(0))
        layer("4x4/Dense1", (nf(0), 1 + label_size), 1 + label_size)
    return out


def official_static_kwargs(variables, net: str, *, label_size: int | None = None, **extra) -> dict:
    """What train.py passes as Network static kwargs (num_channels, resolution, label_size, plus the config's
    overrides), inferred from a variable list; `extra` adds or replaces entries (fmap_base, latent_size, ...)."""
    v = dict(variables)
    if net == "G":
        lods = [k for k in v if k.startswith("ToRGB_lod") and k.endswith("/weight")]
        r_log2 = len(lods) + 1
        num_channels = int(v["ToRGB_lod0/weight"].shape[-1])
        kw = {"num_channels": num_channels, "resolution": 2 ** r_log2, "label_size": label_size or 0}
        if r_log2 > 2:
            kw["fused_scale"] = f"{2 ** r_log2}x{2 ** r_log2}/Conv0_up/weight" in v
    else:
        lods = [k for k in v if k.startswith("FromRGB_lod") and k.endswith("/weight")]
        r_log2 = len(lods) + 1
        num_channels = int(v["FromRGB_lod0/weight"].shape[2])
        inferred = int(v["4x4/Dense1/weight"].shape[1]) - 1
        kw = {"num_channels": num_channels, "resolution": 2 ** r_log2,
              "label_size": inferred if label_size is None else label_size}
        if r_log2 > 2:
            kw["fused_scale"] = f"{2 ** r_log2}x{2 ** r_log2}/Conv1_down/weight" in v
        nf1 = int(v["4x4/Conv/weight"].shape[3])
        kw["mbstd_group_size"] = 4 if int(v["4x4/Conv/weight"].shape[2]) == nf1 + 1 else 0
    kw.update(extra)
    return kw


# ----------------------------------------------------------------------------------------------------------
# A pickler that writes numpy 1.x's global names

class _Global:
    """Stands for the global `module.name` without importing it (it may not exist here: tfutil, numpy.core)."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args, **kwargs):  # pickle's save_reduce insists that a reduce function be callable
        raise TypeError(f"{self.module}.{self.name} is a name to pickle, not a function to call")


class _NetworkState:
    """One tfutil.Network as it pickles: NEWOBJ of the class with no arguments, then BUILD with its state."""

    def __init__(self, state: dict):
        self.state = state


class _Np1Pickler(pickle._Pickler):
    """The pure-Python pickler, with numpy arrays, scalars and dtypes reduced as numpy 1.x reduced them
    (numpy 2 writes `numpy._core.multiarray`, which numpy 1.x cannot load and the 2018 files do not contain),
    and _Global / _NetworkState written by name. Everything else is plain pickle, so protocol 2 pickles bytes
    via `_codecs.encode` and protocol 4 frames, as CPython does."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, protocol: int):
        super().__init__(file, protocol=protocol)
        self._globals: dict[tuple[str, str], _Global] = {}

    def g(self, module: str, name: str) -> _Global:
        """One _Global per name, so repeated uses hit the memo (BINGET), as real pickles do."""
        return self._globals.setdefault((module, name), _Global(module, name))

    def reducer_override(self, obj):
        t = type(obj)
        if t is np.ndarray:
            if obj.dtype.hasobject:
                raise pickle.PicklingError("object arrays are not part of the format")
            # tobytes() is C order whatever the layout (np.ascontiguousarray would make a 0-d array 1-d).
            state = (1, obj.shape, obj.dtype, False, obj.tobytes(order="C"))
            return (self.g("numpy.core.multiarray", "_reconstruct"), (self.g("numpy", "ndarray"), (0,), b"b"), state)
        if isinstance(obj, np.dtype):
            _, args, state = obj.__reduce__()
            return (self.g("numpy", "dtype"), args, state)
        if isinstance(obj, np.generic):
            return (self.g("numpy.core.multiarray", "scalar"), (obj.dtype, obj.tobytes()))
        return NotImplemented

    def _save_named_global(self, obj: _Global):
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
        self.memoize(obj)

    def _save_network(self, obj: _NetworkState):
        self.save(self.g("tfutil", "Network"))
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self.save(obj.state)
        self.write(pickle.BUILD)

    dispatch[_Global] = _save_named_global
    dispatch[_NetworkState] = _save_network


def _dump(obj, path, protocol: int) -> Path:
    if protocol not in (2, 3, 4):
        raise ValueError("protocols 2, 3 and 4 are supported")
    path = Path(path)
    with open(path, "wb") as f:
        _Np1Pickler(f, protocol).dump(obj)
    return path


def _network(name: str, func: str, variables, static_kwargs: dict, build_module_src: str) -> _NetworkState:
    """The dict Network.__getstate__ returns, in its key order."""
    return _NetworkState({
        "version": 2,
        "name": name,
        "static_kwargs": dict(static_kwargs),
        "build_module_src": build_module_src,
        "build_func_name": func,
        "variables": [(str(k), v) for k, v in variables],
    })


def write_official_pickle(path, G_vars, D_vars, Gs_vars, *, protocol: int = 4, static_kwargs=None,
                          build_module_src: str = DEFAULT_BUILD_MODULE_SRC, names=("G", "D", "Gs")) -> Path:
    """An official network pickle: the tuple (G, D, Gs) of tfutil.Network objects. Returns the path.

    A variable list given as None is left out, and a single remaining network is pickled alone, not in a
    tuple (a lone Gs, as people share them). static_kwargs: None (each inferred from its variables, see
    official_static_kwargs; D's label size tells G's), a dict {"G"|"D"|"Gs": {...}} of entries merged onto the
    inferred ones, or a sequence of three complete dicts for G, D and Gs.
    """
    given = {"G": G_vars, "D": D_vars, "Gs": Gs_vars}
    labels = official_static_kwargs(D_vars, "D")["label_size"] if D_vars is not None else 0
    if static_kwargs is None or isinstance(static_kwargs, dict):
        extra = static_kwargs or {}
        unknown = set(extra) - set(given)
        if unknown:
            raise ValueError(f"static_kwargs keys are 'G', 'D', 'Gs', not {sorted(unknown)}")
        kwargs = {k: None if v is None else {**official_static_kwargs(v, "D" if k == "D" else "G",
                                                                     label_size=None if k == "D" else labels),
                                             **extra.get(k, {})}
                  for k, v in given.items()}
    else:
        kwargs = dict(zip(("G", "D", "Gs"), static_kwargs))
    nets = [_network(name, "D_paper" if k == "D" else "G_paper", given[k], kwargs[k], build_module_src)
            for k, name in zip(("G", "D", "Gs"), names) if given[k] is not None]
    if not nets:
        raise ValueError("no network to write")
    return _dump(nets[0] if len(nets) == 1 else tuple(nets), path, protocol)


def _tiny_nets(resolution: int = 8, seed: int = 0, **arch):
    """Three small valid variable lists (by default 8x8, widths 16) for the hostile files."""
    kw = {"fmap_base": 32, "fmap_max": 16, "latent_size": 16, **arch}
    return (official_variables("G", resolution, seed=seed, **kw),
            official_variables("D", resolution, seed=seed + 1, **kw),
            official_variables("G", resolution, seed=seed + 2, **kw))


# ----------------------------------------------------------------------------------------------------------
# Hostile pickles

class _Payload:
    """Reduces to a call that creates `marker`: builtins.exec of an open(...) (portable), or os.system."""

    def __init__(self, marker: Path, how: str):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "exec":
            return (builtins.exec, (f"open({self.marker!r}, 'w').write('pickle payload ran')",))
        if self.how == "system":
            return (os.system, (f"touch {shlex.quote(self.marker)}",))
        raise ValueError(f"how must be 'exec' or 'system', not {self.how!r}")


def evil_pickle(path, marker, *, protocol: int = 4, how: str = "exec", where: str = "network") -> Path:
    """A pickle that creates the file `marker` when loaded with plain pickle.load.

    where="network": the payload takes G's place in the (G, D, Gs) tuple (D and Gs are valid Networks);
    where="variable": G is a valid-looking Network whose first variable's value is the payload, so a loader
    must refuse the global itself, not just check the outer structure.
    """
    g, d, gs = _tiny_nets()
    payload = _Payload(Path(marker), how)
    src = DEFAULT_BUILD_MODULE_SRC
    sk = (official_static_kwargs(g, "G", label_size=0), official_static_kwargs(d, "D"),
          official_static_kwargs(gs, "G", label_size=0))
    if where == "network":
        first = payload
    elif where == "variable":
        first = _network("G", "G_paper", [(g[0][0], payload)] + g[1:], sk[0], src)
    else:
        raise ValueError(f"where must be 'network' or 'variable', not {where!r}")
    nets = (first, _network("D", "D_paper", d, sk[1], src), _network("Gs", "G_paper", gs, sk[2], src))
    return _dump(nets, path, protocol)


def official_pickle_with_malicious_src(path, marker, G_vars=None, D_vars=None, Gs_vars=None, *,
                                       protocol: int = 4, resolution: int = 8, seed: int = 0, **arch) -> Path:
    """A valid official pickle (only allowed globals) whose build_module_src creates `marker` when exec()'d:
    the official loader (Network.__setstate__) exec()s it, so a safe loader must never run it. Without
    variable lists, random networks of `resolution` with official_variables' keyword arguments `arch`
    (fmap_base, fmap_max, latent_size, fused, ...; small defaults)."""
    if G_vars is None or D_vars is None or Gs_vars is None:
        G_vars, D_vars, Gs_vars = _tiny_nets(resolution, seed, **arch)
    # First, before the imports: it acts even where tensorflow is missing.
    src = f"open({str(marker)!r}, 'w').write('build_module_src was executed')\n" + DEFAULT_BUILD_MODULE_SRC
    return write_official_pickle(path, G_vars, D_vars, Gs_vars, protocol=protocol, build_module_src=src)


# ----------------------------------------------------------------------------------------------------------
# pytorch_GAN_zoo checkpoints

class BaseConfig:
    """Pickles as the global models.utils.config.BaseConfig (the zoo's empty attribute bag); the module is
    registered in sys.modules only while write_zoo_checkpoint saves."""


BaseConfig.__module__ = "models.utils.config"
BaseConfig.__qualname__ = "BaseConfig"


def _zoo_config(depths, latent_size, alpha, mbstd, equalized, dim_output) -> BaseConfig:
    """The attributes ProgressiveGAN / BaseGAN set on self.config, in the order they set them."""
    c = BaseConfig()
    c.depthScale0 = int(depths[0])
    c.initBiasToZero = True
    c.leakyReluLeak = 0.2
    c.depthOtherScales = [int(d) for d in depths[1:]]
    c.perChannelNormalization = True
    c.alpha = alpha
    c.miniBatchStdDev = bool(mbstd)
    c.equalizedlR = bool(equalized)
    c.noiseVectorDim = int(latent_size)
    c.dimOutput = int(dim_output)
    c.learningRate = 0.001
    c.attribKeysOrder = None
    c.categoryVectorDim = 0
    c.weightConditionG = 0.0
    c.weightConditionD = 0.0
    c.GDPP = False
    c.latentVectorDim = int(latent_size)
    c.lossCriterion = "WGANGP"
    c.lambdaGP = 10.0
    c.epsilonD = 0.001
    c.logisticGradReal = 0.0
    return c


def zoo_checkpoint(resolution: int, depths, latent_size: int, *, alpha: float = 0.0, mbstd: bool = True,
                   equalized: bool = True, seed: int = 0, dim_output: int = 3) -> dict:
    """{'config', 'netG', 'netD', 'avgG'} as the zoo's getStateDict returns it: state dicts (OrderedDicts of
    float32 CPU tensors) in GNet/DNet's registration order, keys `<layer>.module.weight|bias`.

    depths: the per-scale widths, scale 0 (4x4) first; len(depths) = log2(resolution) - 1. Weights N(0, 1)
    when equalized (else N(0, 1/fan_in)), biases random and non-zero; avgG is netG plus small noise (an EMA is
    close to, never equal to, G: 1% of each tensor's spread), so mixing the two up shows.
    """
    import torch

    depths = [int(d) for d in depths]
    if 4 * 2 ** (len(depths) - 1) != resolution:
        raise ValueError(f"{len(depths)} scales make {4 * 2 ** (len(depths) - 1)}px, not {resolution}px")
    rng = np.random.default_rng(seed)

    def layer(state, name, wshape):
        fan_in = int(np.prod(wshape[1:]))
        w = rng.standard_normal(wshape) * (1.0 if equalized else 1.0 / np.sqrt(fan_in))
        state[name + ".module.weight"] = torch.from_numpy(w.astype(np.float32))
        state[name + ".module.bias"] = torch.from_numpy((0.3 * rng.standard_normal(wshape[0])).astype(np.float32))

    n = len(depths) - 1
    g: OrderedDict = OrderedDict()  # GNet registers scaleLayers, toRGBLayers, formatLayer, groupScale0
    for i in range(n):
        layer(g, f"scaleLayers.{i}.0", (depths[i + 1], depths[i], 3, 3))
        layer(g, f"scaleLayers.{i}.1", (depths[i + 1], depths[i + 1], 3, 3))
    for i in range(n + 1):
        layer(g, f"toRGBLayers.{i}", (dim_output, depths[i], 1, 1))
    layer(g, "formatLayer", (16 * depths[0], latent_size))
    layer(g, "groupScale0.0", (depths[0], depths[0], 3, 3))

    d: OrderedDict = OrderedDict()  # DNet: scaleLayers, fromRGBLayers, (mergeLayers), decisionLayer, groupScaleZero
    for i in range(n):
        layer(d, f"scaleLayers.{i}.0", (depths[i + 1], depths[i + 1], 3, 3))
        layer(d, f"scaleLayers.{i}.1", (depths[i], depths[i + 1], 3, 3))
    for i in range(n + 1):
        layer(d, f"fromRGBLayers.{i}", (depths[i], dim_output, 1, 1))
    layer(d, "decisionLayer", (1, depths[0]))
    layer(d, "groupScaleZero.0", (depths[0], depths[0] + (1 if mbstd else 0), 3, 3))
    layer(d, "groupScaleZero.1", (depths[0], 16 * depths[0]))

    avg = OrderedDict(
        (k, v + float(0.01 * v.std()) * torch.from_numpy(rng.standard_normal(tuple(v.shape)).astype(np.float32)))
        for k, v in g.items())
    return {"config": _zoo_config(depths, latent_size, alpha, mbstd, equalized, dim_output),
            "netG": g, "netD": d, "avgG": avg}


@contextlib.contextmanager
def _zoo_modules():
    """models, models.utils, models.utils.config in sys.modules for the duration (pickle looks the class up
    by name to check it), then exactly what was there before."""
    names = ("models", "models.utils", "models.utils.config")
    before = {k: sys.modules.get(k) for k in names}
    if before["models.utils.config"] is not None:
        raise RuntimeError("a module models.utils.config is already imported; refusing to shadow it")
    mods = {k: types.ModuleType(k) for k in names}
    mods["models"].__path__ = []
    mods["models.utils"].__path__ = []
    mods["models"].utils = mods["models.utils"]
    mods["models.utils"].config = mods["models.utils.config"]
    mods["models.utils.config"].BaseConfig = BaseConfig
    for k in names:
        if before[k] is None:
            sys.modules[k] = mods[k]
    try:
        yield
    finally:
        for k in names:
            if before[k] is None:
                sys.modules.pop(k, None)


def write_zoo_checkpoint(path, ckpt: dict, legacy_format: bool = False) -> Path:
    """torch.save(ckpt, path) as the zoo's save() does; legacy_format writes the pre-1.6 (non-zip) format
    some 2019 checkpoints have. Returns the path."""
    import torch

    path = Path(path)
    with _zoo_modules():
        if legacy_format:
            torch.save(ckpt, path, _use_new_zipfile_serialization=False)
        else:
            torch.save(ckpt, path)
    return path
