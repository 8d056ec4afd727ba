"""Bad input to `progan train` and `progan fid` ends with one line `Error: ...` naming what to fix, before any
work; foreign weights and statistics files of every kind are one line too; `progan --version` answers."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from progan_cli import __version__
from progan_cli.cli.app import app
from progan_cli.config import TrainConfig
from progan_cli.errors import UsageError
from progan_cli.metrics.inception import PYTORCH_FID_FILE
from conftest import TINY, image_folder, one_error_line, photo_pyramid

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("private_cache")


def test_version_prints_and_exits_0():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"progan {__version__}"


@pytest.mark.parametrize("option, needle", [
    (["--lr", "-1"], "--lr -1.0 must be a positive number"),
    (["--lr", "nan"], "--lr nan must be a positive number"),
    (["--stable-kimg", "inf"], "--stable-kimg inf must be a positive number"),
    (["--tick-kimg", "0.0001"], "--tick-kimg 0.0001 is less than one image"),
    (["--minibatch", "5:16"], "--minibatch: 5 is not a resolution"),
    (["--seed", "-3"], "--seed -3 must be between 0"),
    (["--keep", "0"], "--keep 0 must be 1 or more"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
])
def test_train_option_errors_are_one_line_before_any_work(tmp_path, option, needle):
    data = photo_pyramid(tmp_path / "photos.h5", 8)
    tiny = [a for a in TINY if a not in ("--device", "cpu")] if "--device" in option else TINY
    result = runner.invoke(app, ["train", str(data), "--target", "8", *tiny, "--total-kimg", "0.016", *option,
                                 "--out", str(tmp_path / "run")])
    assert needle in one_error_line(result, 2)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, needle", [
    ("ema_decay", 1.0, "--ema-decay 1.0 must be in [0, 1)"),
    ("ema_decay", -0.5, "--ema-decay -0.5 must be in [0, 1)"),
    ("ema_kimg", -1.0, "--ema-kimg -1.0 must be 0 or more"),
    ("ema_rampup", 0.0, "--ema-rampup 0.0 must be positive"),
    ("mbstd_group_size", 0, "mbstd_group_size 0 must be 1 or more"),  # was a ZeroDivisionError
    ("minibatch_repeats", 0, "minibatch_repeats 0 must be 1 or more"),
    ("adam_betas", (0.0, 1.0), "adam_betas (0.0, 1.0) must be two numbers in [0, 1)"),
    ("adam_eps", 0.0, "adam_eps 0.0 must be a positive number"),
    ("lr_overrides", {1024: -1.0}, "lr_overrides at 1024x1024: -1.0 must be a positive number"),
    ("minibatch", {4: 8.5}, "--minibatch at 4x4: 8.5 must be a positive whole number"),
    ("lr", "0.1", "--lr '0.1' is not a number"),  # a hand-edited config.json
    ("fmap_base", 1.5, "--fmap-base 1.5 is not a whole number"),
    ("mirror", 1, "--mirror 1 is not true or false"),
    ("grid", (0, 2), "--grid (0, 2) must be two positive numbers"),
])
def test_config_fields_set_to_nonsense_name_the_field(field, value, needle):
    with pytest.raises(UsageError) as info:
        TrainConfig(data="x.h5", **{field: value})
    assert needle in str(info.value)


def test_a_config_json_with_nonsense_resumes_to_one_line(tmp_path):
    data = photo_pyramid(tmp_path / "photos.h5", 4)
    run = tmp_path / "run"
    args = ["train", str(data), "--target", "4", *TINY, "--total-kimg", "0.016", "--minibatch", "4"]
    assert runner.invoke(app, [*args, "--out", str(run)]).exit_code == 0
    # The checkpoint's own config is what a resume reads: a run made by an older, laxer progan.
    ckpt = next((run / "checkpoints").iterdir())
    state = torch.load(ckpt, weights_only=True)
    state["config"]["mbstd_group_size"] = 0
    torch.save(state, ckpt)
    assert "mbstd_group_size 0" in one_error_line(runner.invoke(app, ["train", "--resume", str(run),
                                                                 "--total-kimg", "0.032"]), 2)


def _junk_weights(tmp_path) -> dict[str, str]:
    """Files a user might pass as --weights, by what they are."""
    files = {}
    (tmp_path / "garbage.pt").write_text("not weights at all\n")
    files["garbage.pt"] = "weights_only=True fails"
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    files["tensor.pt"] = "it holds a Tensor"
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "other.pt")
    files["other.pt"] = "470 of its 470 tensors are missing"
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # needs unpickling code: refused
    files["pickled.pt"] = "weights_only=True fails"
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "other.pt").read_bytes()[:200])
    files["truncated.pt"] = "weights_only=True fails"
    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as z:
        z.writestr("readme.txt", "hello")
    files["zip.pt"] = "weights_only=True fails"
    return files


def test_foreign_weights_files_are_one_line(tmp_path):
    a, b = image_folder(tmp_path / "a", 2), image_folder(tmp_path / "b", 2)
    for name, needle in _junk_weights(tmp_path).items():
        line = one_error_line(runner.invoke(app, ["fid", str(a), str(b), "--weights", str(tmp_path / name)]), 1)
        assert f"{tmp_path / name}: not a 2015-12-05 FID Inception network" in line and needle in line, line
        assert PYTORCH_FID_FILE in line


def test_a_wrongly_shaped_state_dict_names_the_tensor(tmp_path, pth_weights):  # noqa: F811
    state = torch.load(pth_weights, weights_only=True)
    state["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's 1000 classes
    torch.save(state, tmp_path / "tv.pth")
    a, b = image_folder(tmp_path / "a", 2), image_folder(tmp_path / "b", 2)
    line = one_error_line(runner.invoke(app, ["fid", str(a), str(b), "--weights", str(tmp_path / "tv.pth")]), 1)
    assert "fc.weight is (1000, 2048), the network's is (1008, 2048)" in line


def test_foreign_statistics_files_are_one_line(tmp_path):
    a = image_folder(tmp_path / "a", 2)
    (tmp_path / "junk.npz").write_text("junk")  # numpy alone would explain allow_pickle
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npz").write_bytes((tmp_path / "single.npy").read_bytes())
    np.savez(tmp_path / "objects.npz", mu=np.array([{}], dtype=object), sigma=np.eye(1))
    with open(tmp_path / "pickle.npz", "wb") as f:
        pickle.dump({"mu": [0.0]}, f)
    np.savez(tmp_path / "nan.npz", mu=np.full(2, np.nan), sigma=np.eye(2))
    np.savez(tmp_path / "text.npz", mu=np.array(["a", "b"]), sigma=np.eye(2))
    cases = {"junk.npz": "not an .npz archive", "single.npz": "a single .npy array",
             "objects.npz": "holds pickled Python objects", "pickle.npz": "not an .npz archive",
             "nan.npz": "NaN or infinite", "text.npz": "'mu' holds <U1 values, not numbers"}
    for name, needle in cases.items():
        line = one_error_line(runner.invoke(app, ["fid", str(tmp_path / name), str(a)]), 1)
        assert needle in line and "allow_pickle" not in line, line


def test_fid_device_and_option_errors_are_one_line(tmp_path):
    a, b = image_folder(tmp_path / "a", 2), image_folder(tmp_path / "b", 2)
    assert "--device cuda:7" in one_error_line(runner.invoke(app, ["fid", str(a), str(b), "--device", "cuda:7"]), 2)
    assert "--device 'tpu'" in one_error_line(runner.invoke(app, ["fid", str(a), str(b), "--device", "tpu"]), 2)
    assert "--n-reals 1" in one_error_line(runner.invoke(app, ["fid", str(a), str(b), "--n-reals", "1"]), 2)
    data = photo_pyramid(tmp_path / "photos.h5", 16)
    line = one_error_line(runner.invoke(app, ["fid", str(data), str(a), "--res", "100"]), 1)
    assert "no 100x100 level" in line and "powers of two" in line and "--target 100" not in line
    assert "--target 32" in one_error_line(runner.invoke(app, ["fid", str(data), str(a), "--res", "32"]), 1)


def test_save_stats_refuses_to_overwrite_without_overwrite(tmp_path):
    a = image_folder(tmp_path / "a", 2)
    existing = tmp_path / "real.npz"
    existing.write_bytes(b"precious")
    line = one_error_line(runner.invoke(app, ["fid", str(a), "--save-stats", str(existing)]), 2)
    assert "already exists" in line and "--overwrite" in line
    assert existing.read_bytes() == b"precious"
