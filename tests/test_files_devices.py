"""atomic_write keeps the old file on failure and leaves no temporary file; --device values fail in one line."""

from __future__ import annotations

import pytest
import torch

from progan_cli.devices import resolve_device
from progan_cli.errors import UsageError
from progan_cli.files import atomic_write


def test_atomic_write_replaces_on_success(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with atomic_write(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"  # readers see the old file until the rename
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path, exc):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(exc):
        with atomic_write(path) as tmp:
            tmp.write_text("half")
            raise exc()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("name", ["tpu", "mps", "garbage:1:2", "cuda:99"])
def test_bad_devices_are_usage_errors(name):
    with pytest.raises(UsageError, match="--device"):
        resolve_device(name)


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_threads_default_to_the_cores_left_after_workers(monkeypatch):
    """Hand numbers: 8 usable cores, 2 DataLoader workers -> 6 threads; 2 ranks on the machine -> 4 - 2 = 2."""
    from progan_cli.devices import use_threads

    before = torch.get_num_threads()
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    try:
        assert use_threads(None, reserved=2) == 6 == torch.get_num_threads()
        assert use_threads(None, reserved=20) == 1  # never below one
        assert use_threads(3, reserved=2) == 3  # --threads wins
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert use_threads(None, reserved=2) == 2
        with pytest.raises(UsageError, match="--threads 0 must be 1 or more"):
            use_threads(0)
    finally:
        torch.set_num_threads(before)
