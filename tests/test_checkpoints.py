"""Checkpoint files are ordered by the kimg they were written at, not by their names as text."""

from progan_cli.checkpoints import checkpoint_name, list_checkpoints


def test_checkpoints_sort_by_kimg(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for nimg in (600_512, 601_000, 599_500, 600_000):
        (tmp_path / "checkpoints" / checkpoint_name(nimg)).write_bytes(b"")
    # As text, "ckpt-000600.512.pt" < "ckpt-000600.pt"; a stop at 600.512 kimg must still be the newest of 600.
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-000599.500.pt", "ckpt-000600.pt", "ckpt-000600.512.pt", "ckpt-000601.pt"]
