"""The catalogue of published ProGANs: NVIDIA's 31 official networks and pytorch_GAN_zoo's 4, as data.

NVIDIA's (Karras et al., ICLR 2018; TensorFlow pickles, CC BY-NC 4.0) live in a Google Drive folder that
allows no scripted download: a person fetches them and puts them at `cached_path(entry)`. The zoo's
(facebookresearch/pytorch_GAN_zoo, PyTorch state dicts) come from the URLs of its hubconf.py; the 8 hex
digits that end each file name are the start of its sha256 (torch.hub's convention, and all that is
published), so `sha256` holds that prefix. Nothing here downloads: see progan_cli.download and
`progan download`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from progan_cli.errors import DataError, UsageError
from progan_cli.files import cache_dir

NVIDIA_FOLDER = "https://drive.google.com/drive/folders/15hvzxt_XxuokSmj0uO4xxMTMWVc0cIMU"
NVIDIA_LICENCE = "CC BY-NC 4.0"
# The zoo's LICENSE (BSD 3-Clause, "Copyright 2019, Facebook") covers the repository; it states no other
# terms for the weights its hubconf.py downloads.
ZOO_LICENCE = "BSD-3-Clause"
ZOO_BASE = "https://dl.fbaipublicfiles.com/gan_zoo/PGAN/"

LSUN_CATEGORIES = (
    "airplane", "bedroom", "bicycle", "bird", "boat", "bottle", "bridge", "bus", "car", "cat", "chair",
    "churchoutdoor", "classroom", "conferenceroom", "cow", "diningroom", "diningtable", "dog", "horse", "kitchen",
    "livingroom", "motorbike", "person", "pottedplant", "restaurant", "sheep", "sofa", "tower", "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class Pretrained:
    """One published network.

    url None: no scripted download (NVIDIA's Drive). sha256: the full hex digest, or its known prefix (the
    zoo's 8 digits), or None when nothing is published. size: bytes, or None when unknown.
    """

    name: str
    source: str  # "nvidia" or "gan-zoo"
    dataset: str
    resolution: int
    file: str
    licence: str
    url: str | None
    sha256: str | None
    size: int | None


def _nvidia(name: str, dataset: str, resolution: int, file: str) -> Pretrained:
    return Pretrained(name, "nvidia", dataset, resolution, file, NVIDIA_LICENCE, None, None, None)


def _zoo(name: str, dataset: str, resolution: int, file: str) -> Pretrained:
    digest = file.rsplit("-", 1)[1].split(".")[0]  # celebaHQ_s6_i80000-6196db68.pth -> 6196db68
    return Pretrained(name, "gan-zoo", dataset, resolution, file, ZOO_LICENCE, ZOO_BASE + file, digest, None)


CATALOGUE: tuple[Pretrained, ...] = (
    _nvidia("celebahq-1024", "CelebA-HQ", 1024, "karras2018iclr-celebahq-1024x1024.pkl"),
    *(_nvidia(f"lsun-{c}-256", f"LSUN {c}", 256, f"karras2018iclr-lsun-{c}-256x256.pkl") for c in LSUN_CATEGORIES),
    # pytorch_GAN_zoo hubconf.py, PGAN(): s<scale> is the last scale trained (4 * 2**s pixels)
    _zoo("celebAHQ-256", "CelebA-HQ", 256, "celebaHQ_s6_i80000-6196db68.pth"),
    _zoo("celebAHQ-512", "CelebA-HQ", 512, "celebaHQ16_december_s7_i96000-9c72988c.pth"),
    _zoo("DTD", "DTD (textures)", 128, "testDTD_s5_i96000-04efa39f.pth"),
    _zoo("celeba", "CelebA (cropped)", 128, "celebaCropped_s5_i83000-2b0acc76.pth"),
)


def names() -> list[str]:
    return [entry.name for entry in CATALOGUE]


def find(name: str) -> Pretrained:
    """The entry called `name` (any case); an unknown name is a UsageError that lists the known ones."""
    for entry in CATALOGUE:
        if entry.name.lower() == name.lower():
            return entry
    raise UsageError(f"no published network is called {name!r}; the names are: {', '.join(names())} "
                     "(`progan download --list` shows them)")


def cached_path(entry: Pretrained) -> Path:
    """Where progan keeps (and looks for) the network: $PROGAN_CACHE/networks/<file>."""
    return cache_dir() / "networks" / entry.file


def how_to_get(entry: Pretrained) -> str:
    """What a person does to put the network where progan looks for it."""
    if entry.url is None:
        return (f"NVIDIA's networks cannot be fetched by a script (Google Drive asks a person): download {entry.file} "
                f"from {NVIDIA_FOLDER} and put it at {cached_path(entry)}")
    return f"fetch it with `progan download {entry.name}`"


def locate(path: Path | str) -> Path:
    """`path` itself, or, when no such file or folder exists and it is a catalogue name (`celebAHQ-256`), the
    network's file in the cache; DataError saying how to get it when it is not there yet."""
    path = Path(path)
    if path.exists() or len(path.parts) != 1:
        return path
    try:
        entry = find(path.name)
    except UsageError:
        return path
    cached = cached_path(entry)
    if not cached.is_file():
        raise DataError(f"{entry.name}: a published network that is not in the cache yet; {how_to_get(entry)}")
    return cached
