"""Checkpoint files are ordered by the kimg they were written at, not by their names as text; a checkpoint that
cannot be what progan wrote (truncated, foreign, newer, missing) is refused in one line by the loader and by the
commands that read one."""

import shutil

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY, photo_pyramid
from progan_cli.checkpoints import FORMAT_VERSION, checkpoint_name, list_checkpoints, load_checkpoint
from progan_cli.cli.app import app
from progan_cli.errors import CheckpointError


def test_checkpoints_sort_by_kimg(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for nimg in (600_512, 601_000, 599_500, 600_000):
        (tmp_path / "checkpoints" / checkpoint_name(nimg)).write_bytes(b"")
    # As text, "ckpt-000600.512.pt" < "ckpt-000600.pt"; a stop at 600.512 kimg must still be the newest of 600.
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-000599.500.pt", "ckpt-000600.pt", "ckpt-000600.512.pt", "ckpt-000601.pt"]


# ---------------------------------------------------------------------------------------------- refusals
# A checkpoint that cannot be what progan wrote is refused with one CheckpointError line naming the file;
# the commands print it as one `Error:` line, exit 1, and write nothing.


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real 4x4 run of 8 images, one checkpoint."""
    tmp = tmp_path_factory.mktemp("ckpt")
    data = photo_pyramid(tmp / "photos.h5", 4)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, ["train", str(data), "--target", "4", *TINY, "--threads", "1",
                                      "--total-kimg", "0.008", "--minibatch", "4", "--out", str(tmp / "run")])
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return tmp / "run"


def _bad_inputs(run, tmp):
    """(path, what the one line must say) for every way a checkpoint path can be wrong."""
    good = next((run / "checkpoints").iterdir())
    cut = tmp / "truncated.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty_file = tmp / "empty.pt"
    empty_file.write_bytes(b"")
    torch.save({"G": torch.zeros(2), "epoch": 3}, tmp / "foreign_dict.pt")  # another project's plain dict
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    torch.save(torch.nn.Linear(2, 2), tmp / "pickled_module.pt")  # needs unpickling code: weights_only refuses
    newer = tmp / "newer.pt"
    torch.save({**torch.load(good, weights_only=True), "format_version": FORMAT_VERSION + 1}, newer)
    (tmp / "empty_run").mkdir()
    (tmp / "no_ckpts" / "checkpoints").mkdir(parents=True)
    (tmp / "foreign_names" / "checkpoints").mkdir(parents=True)
    for name in ("latest.pt", "ckpt-1.pt", "ckpt-000010.pt.tmp"):  # none named the way save_checkpoint names
        shutil.copy(good, tmp / "foreign_names" / "checkpoints" / name)
    damaged_newest = tmp / "damaged_newest"
    shutil.copytree(run, damaged_newest)
    (damaged_newest / "checkpoints" / "ckpt-000999.pt").write_bytes(cut.read_bytes())
    return [
        (cut, "truncated.pt: not a readable checkpoint"),
        (empty_file, "empty.pt: not a readable checkpoint"),
        (tmp / "foreign_dict.pt", "foreign_dict.pt: not a progan checkpoint"),
        (tmp / "tensor.pt", "tensor.pt: not a progan checkpoint"),
        (tmp / "pickled_module.pt", "pickled_module.pt: not a readable checkpoint"),
        (newer, f"checkpoint format {FORMAT_VERSION + 1} is newer than this progan reads ({FORMAT_VERSION})"),
        (tmp / "empty_run", "empty_run has no checkpoints in checkpoints/"),
        (tmp / "no_ckpts", "no_ckpts has no checkpoints in checkpoints/"),
        (tmp / "foreign_names", "foreign_names has no checkpoints in checkpoints/"),
        (tmp / "absent", "absent: no such run folder or checkpoint file"),
        # the newest by kimg is the damaged one: it is named, not silently skipped for an older one
        (damaged_newest, "ckpt-000999.pt: not a readable checkpoint"),
    ]


def test_load_checkpoint_refuses_each_bad_input_with_one_line(run, tmp_path):
    assert load_checkpoint(run)["format_version"] == FORMAT_VERSION  # the good one loads
    for path, needle in _bad_inputs(run, tmp_path):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert needle in message and "\n" not in message, (path, message)


def test_sample_and_resume_refuse_each_bad_input_with_one_line(run, tmp_path):
    out = tmp_path / "never"
    for path, needle in _bad_inputs(run, tmp_path):
        for args in (["sample", str(path), "--n", "2", "--device", "cpu", "--out", str(out)],
                     ["train", "--resume", str(path), "--device", "cpu", "--workers", "0"]):
            result = CliRunner().invoke(app, args)
            lines = result.stderr.strip().splitlines()
            assert result.exit_code == 1 and result.stdout == "", (args, result.output)
            assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], (args, result.stderr)
            assert not out.exists()
