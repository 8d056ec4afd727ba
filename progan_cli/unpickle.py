"""Reading pickled files without running what they contain: the one allow-list of globals progan accepts.

A pickle names a global (a module and a name) for every class or function it needs and calls them while it
loads, so a file can run any code (`os.system`, `builtins.exec`) just by naming it. Here `find_class` is
the gate every such name passes (GLOBAL, STACK_GLOBAL, INST, OBJ and the extension registry all use it):
names on the allow-list map to harmless objects, everything else stops the load with one line before the
object is created. NVIDIA's `tfutil.Network` and pytorch_GAN_zoo's `BaseConfig` map to stubs that keep their
pickled state as plain data; nothing from the file (such as the `build_module_src` that the official loader
runs through Python's exec) is ever executed. The same gate reads the MTCNN weights that the `mtcnn` package
ships as joblib pickles (`load_joblib_arrays`).
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from progan_cli.errors import CheckpointError


class NetworkStub:
    """Stands in for the official `tfutil.Network`: `state` is the dict its `__getstate__` pickled
    (version, name, static_kwargs, build_module_src, build_func_name, variables), kept as data."""

    state: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        self.state = state


class ConfigStub:
    """Stands in for pytorch_GAN_zoo's `models.utils.config.BaseConfig`, an empty class whose attributes are
    the run's settings; torch's weights_only loader fills `__dict__` from the pickled state."""


ConfigStub.__module__, ConfigStub.__qualname__ = "models.utils.config", "BaseConfig"


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode`, which protocol-2 pickles use for bytes (`encode(str, 'latin1')`), limited to that."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1", errors)


# numpy's array and scalar reconstructors, whatever module this numpy keeps them in (numpy 2 moved
# numpy.core to numpy._core; the 2018 files name numpy.core).
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]

NVIDIA_GLOBALS: dict[tuple[str, str], Any] = {
    ("tfutil", "Network"): NetworkStub,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, allowed: dict[tuple[str, str], Any]) -> None:
        super().__init__(file, encoding="latin1")  # as the official misc.load_pkl
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"persistent id {pid!r}")


class _Refused(pickle.UnpicklingError):
    """A global outside the allow-list."""


def load_pickle(path: Path, allowed: dict[tuple[str, str], Any], what: str) -> Any:
    """The object pickled in `path`, built only from `allowed` globals; CheckpointError otherwise.

    `what` names the format in messages ("official ProGAN pickle").
    """
    try:
        with open(path, "rb") as f:
            return _AllowListUnpickler(f, allowed).load()  # allow-listed
    except _Refused as exc:
        raise CheckpointError(f"{path}: not a readable {what}: it asks for {exc}, which could run code (progan "
                              f"loads only the globals an {what} uses)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, UnicodeDecodeError) as exc:  # truncated or garbled data
        raise CheckpointError(f"{path}: not a readable {what} ({exc.__class__.__name__})") from None


def load_torch(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)` with pytorch_GAN_zoo's config class allowed as a stub: tensors, state
    dicts and plain values only; CheckpointError for anything else."""
    import torch

    try:
        with torch.serialization.safe_globals([ConfigStub]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global: GLOBAL " in text:
            name = text.split("Unsupported global: GLOBAL ", 1)[1].split(" ", 1)[0]
            raise CheckpointError(f"{path}: not a readable {what}: it asks for {name}, which could run code "
                                  "(progan loads tensors and plain values only)") from None
        raise CheckpointError(f"{path}: not a readable {what} (UnpicklingError)") from None
    except Exception as exc:  # torch raises several kinds for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable {what} ({exc.__class__.__name__})") from None


class _ArrayHeader:
    """Stands in for joblib's `NumpyArrayWrapper`: the header (dtype, shape, order) of an array whose raw bytes
    follow it in the stream."""

    dtype: np.dtype
    shape: tuple[int, ...]
    order: str


class _JoblibArrays(pickle._Unpickler):  # the Python unpickler: its BUILD can read the bytes after a header
    dispatch = dict(pickle._Unpickler.dispatch)
    _ALLOWED = {("joblib.numpy_pickle", "NumpyArrayWrapper"): _ArrayHeader, ("numpy", "ndarray"): np.ndarray,
                ("numpy", "dtype"): np.dtype, ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
                ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def load_build(self) -> None:
        super().load_build()
        header = self.stack[-1]
        if isinstance(header, _ArrayHeader):  # joblib: a padding length byte, the padding, then the data
            dtype = np.dtype(header.dtype)
            if dtype.hasobject:
                raise _Refused("an array of Python objects")
            if getattr(header, "numpy_array_alignment_bytes", None) is not None:
                self.read(self.read(1)[0])
            count = int(np.prod(header.shape, dtype=np.int64))
            data = self.read(count * dtype.itemsize)
            self.stack[-1] = np.frombuffer(data, dtype=dtype, count=count).reshape(header.shape, order=header.order)

    dispatch[pickle.BUILD[0]] = load_build


def load_joblib_arrays(path: Path) -> list[np.ndarray]:
    """The numpy arrays of an lz4-compressed `joblib.dump` (as the mtcnn package ships its weights), read
    through the allow-list; CheckpointError otherwise."""
    import lz4.frame

    try:
        raw = lz4.frame.decompress(Path(path).read_bytes())
        arrays = _JoblibArrays(io.BytesIO(raw)).load()  # allow-listed
    except _Refused as exc:
        raise CheckpointError(f"{path}: not readable weights: it asks for {exc}, which could run code") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as exc:  # lz4 raises RuntimeError for a damaged frame
        raise CheckpointError(f"{path}: not readable weights ({exc.__class__.__name__})") from None
    if not isinstance(arrays, list) or not all(isinstance(a, np.ndarray) for a in arrays):
        raise CheckpointError(f"{path}: not a list of arrays")
    return arrays
