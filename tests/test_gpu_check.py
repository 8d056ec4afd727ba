"""benchmarks/gpu_check.py's dry run: every stage of the GPU check runs its code path at toy sizes on the CPU,
so the script is known to work before a GPU machine is lent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_dry_run_runs_every_stage(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "run", "--dry-run", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = {name: r.get("error") for name, r in results.items() if not r["ok"]}
    assert done.returncode == 0 and not failed, (failed, done.stdout[-3000:], done.stderr[-3000:])
    assert list(results) == ["environment", "tests", "train_speed", "prep", "reals", "stop_and_resume", "fid",
                             "swd"]
    assert "passed" in results["tests"]["summary"]
    speed = results["train_speed"]["rows"]
    assert {(r["res"], r["precision"]) for r in speed} == {(res, p) for res in (4, 8) for p in ("fp32", "tf32", "bf16")}
    assert all(r["img_per_s"] > 0 for r in speed)
    assert results["prep"]["celeba_align"]["images"] == 1  # one face found and cropped
    run = results["stop_and_resume"]
    assert run["stopped_at_checkpoint"].startswith("ckpt-") and run["end_kimg"] > run["first_part_kimg"] > 0
    assert results["fid"]["n"] == [results["reals"]["images"], 2] and results["swd"]["n"] == 2
