"""One pyramid level as a torch Dataset, the form `train` and the metrics read training images in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from progan_cli.data.pyramid import Pyramid
from progan_cli.errors import DataError

# A level smaller than this is read into memory once per process: faster than chunked reads and small.
IN_MEMORY_BYTES = 512 << 20


class LevelDataset(Dataset):
    """Images of one resolution of a pyramid as uint8 tensors (3, res, res).

    The HDF5 file is opened lazily in each process: h5py handles must not cross a fork, so DataLoader
    workers each open their own.
    """

    def __init__(self, path: Path, res: int, in_memory: bool | None = None) -> None:
        self.path = Path(path)
        self.res = res
        with Pyramid(self.path) as pyr:
            pyr.level(res)  # raises DataError when the level is missing
            self._len = len(pyr)
            nbytes = self._len * res * res * 3
        if self._len == 0:
            raise DataError(f"{self.path} holds no images")
        self.in_memory = nbytes <= IN_MEMORY_BYTES if in_memory is None else in_memory
        self._pyr: Pyramid | None = None
        self._data: np.ndarray | None = None

    def __len__(self) -> int:
        return self._len

    def _open(self) -> None:
        self._pyr = Pyramid(self.path)
        if self.in_memory:
            self._data = self._pyr.images(self.res)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._pyr is None:
            self._open()
        img = self._data[index] if self._data is not None else self._pyr.image(self.res, index)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))

    def __getstate__(self) -> dict:
        # Pickled into worker processes (spawn) without the open file or the in-memory copy.
        return {**self.__dict__, "_pyr": None, "_data": None}


def find_pyramid(folder: Path | None = None) -> Path:
    """The one *.h5 file in `folder` (default: the working directory), where `progan prep` leaves it."""
    folder = Path.cwd() if folder is None else Path(folder)
    found = sorted(p for p in folder.glob("*.h5") if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"no pyramid (*.h5) in {folder}; run `progan prep PHOTOS/` first or name the file")
    names = ", ".join(p.name for p in found)
    raise DataError(f"several pyramids in {folder} ({names}); name the one to use")
