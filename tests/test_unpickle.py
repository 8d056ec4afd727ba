"""The allow-list unpickler on the MTCNN weights the `mtcnn` package ships (joblib's lz4 pickles of numpy
arrays): the same arrays as joblib's own loader, and a joblib file that asks for anything else (a global that
would run code, an array of Python objects) refused before it runs. The official-pickle side of the same
allow-list is tested in test_formats_official.py."""

from __future__ import annotations

import os

import joblib
import numpy as np
import pytest

from progan_cli.data.mtcnn import weights_file
from progan_cli.errors import CheckpointError
from progan_cli.unpickle import load_joblib_arrays


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
def test_mtcnn_weights_read_as_joblib_reads_them(name):
    ours, reference = load_joblib_arrays(weights_file(name)), joblib.load(weights_file(name))
    assert len(ours) == len(reference) == {"pnet": 13, "rnet": 16, "onet": 21}[name]
    for a, b in zip(ours, reference):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


class _Payload:
    """Pickles as a call of os.system: loading it with joblib.load would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_foreign_globals_and_object_arrays_are_refused(tmp_path):
    marker = tmp_path / "ran"
    joblib.dump([np.zeros(3, np.float32), _Payload(marker)], tmp_path / "evil.lz4", compress="lz4")
    with pytest.raises(CheckpointError, match="it asks for posix.system, which could run code"):
        load_joblib_arrays(tmp_path / "evil.lz4")
    assert not marker.exists()
    joblib.dump([np.array([1, "a"], dtype=object)], tmp_path / "objects.lz4", compress="lz4")
    with pytest.raises(CheckpointError, match="an array of Python objects"):
        load_joblib_arrays(tmp_path / "objects.lz4")
    (tmp_path / "cut.lz4").write_bytes(weights_file("pnet").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not readable weights"):
        load_joblib_arrays(tmp_path / "cut.lz4")
