"""Signals to the whole process group, as a terminal, `timeout`, Slurm and systemd send them, while `progan
train` reads its data with DataLoader workers: a checkpoint, exit 128 + signal, and a run that resumes to
the very weights of one never stopped. SIGUSR1 (Slurm's pre-emption warning) writes a checkpoint and goes on.

Each run is a real `python -m progan_cli train` in a session of its own (start_new_session), signalled with
os.killpg like a terminal signals its foreground group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT
from progan_cli.checkpoints import list_checkpoints, load_checkpoint
from progan_cli.cli.app import app
from progan_cli.data.stream import reals_stream
from progan_cli.training.signals import held_while_forking, ignore_in_worker
from conftest import TINY, photo_pyramid, run_log, same_state

pytestmark = pytest.mark.usefixtures("one_thread")

# Tiny networks on the 8 fixture photos at 8x8: 32 images per schedule update, a tick every update, phases
# of 64 + 64 images. No periodic snapshot: every checkpoint comes from a signal. One CPU thread in every
# part of a run (`progan train` would otherwise pick 2 threads without workers and 1 beside two): float sums
# over a different number of threads differ in the last bits, and the resume test compares bit for bit.
SCHEDULE = ["--target", "8", "--stable-kimg", "0.064", "--fade-kimg", "0.064", "--minibatch", "8",
            "--tick-kimg", "0.032", "--snapshot-ticks", "100000", "--threads", "1"]
WITH_WORKERS = [*TINY[:TINY.index("--workers")], "--workers", "2"]


def _start(tmp_path: Path, launcher: list[str] | None = None) -> tuple[Path, Path, subprocess.Popen]:
    """A run on the fixture photos with 2 DataLoader workers, long enough to be signalled: (data, run, process)."""
    data = photo_pyramid(tmp_path / "photos.h5", 8)
    run = tmp_path / "run"
    args = [str(data), *SCHEDULE, *WITH_WORKERS, "--total-kimg", "100", "--out", str(run)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # one thread: as in-process tests
    proc = subprocess.Popen([*(launcher or [sys.executable]), "-m", "progan_cli", "train", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    return data, run, proc


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _ticks(run: Path) -> int:
    log = run / "log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, out, err


def _stopped_kimg(run: Path) -> float:
    return load_checkpoint(run)["progress"]["cur_nimg"] / 1000


@pytest.mark.slow
def test_group_sigterm_with_workers_checkpoints_and_resumes_bitwise(tmp_path):
    data, run, proc = _start(tmp_path)
    _wait_for(lambda: _ticks(run) >= 2, proc, "two ticks")
    os.killpg(proc.pid, signal.SIGUSR1)  # Slurm's warning: a checkpoint, and training goes on
    _wait_for(lambda: list_checkpoints(run), proc, "the SIGUSR1 checkpoint")
    after_usr1 = _ticks(run)
    _wait_for(lambda: _ticks(run) >= after_usr1 + 2, proc, "two more ticks after SIGUSR1")
    os.killpg(proc.pid, signal.SIGTERM)  # workers included, as `timeout -s TERM` does
    rc, out, err = _finish(proc)
    assert rc == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    assert "SIGUSR1: writing a checkpoint" in err and "stopped at kimg" in err
    assert out.splitlines() == [str(run)]
    assert len(list_checkpoints(run)) == 2  # the SIGUSR1 one and the SIGTERM one

    # Resumed to a little past the stop, the run equals one that never stopped (no workers: the data
    # order does not depend on them), weights, Adam states and log alike.
    total = f"{_stopped_kimg(run) + 0.064:.3f}"
    runner = CliRunner()
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--total-kimg", total, "--workers", "0",
                                  "--threads", "1"])
    assert resumed.exit_code == 0, resumed.output
    straight = runner.invoke(app, ["train", str(data), *SCHEDULE, *TINY, "--total-kimg", total, "--out",
                                   str(tmp_path / "straight")])
    assert straight.exit_code == 0, straight.output
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(run)
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "rng", "tick_sums"):
        assert same_state(a[key], b[key]), key
    assert run_log(tmp_path / "straight") == run_log(run)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])  # timeout; Ctrl-C
def test_group_signal_with_workers_ends_128_plus_signal_with_a_checkpoint(tmp_path, sig):
    _, run, proc = _start(tmp_path)
    _wait_for(lambda: _ticks(run) >= 1, proc, "the first tick")
    os.killpg(proc.pid, sig)
    rc, out, err = _finish(proc)
    assert rc == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (checkpoint,) = list_checkpoints(run)
    assert load_checkpoint(checkpoint)["progress"]["cur_nimg"] >= 32


@pytest.mark.slow
def test_torchrun_two_ranks_group_sigterm_checkpoints_and_resumes(tmp_path):
    """torchrun with 2 gloo ranks on the CPU, each with 2 DataLoader workers: the whole group gets SIGTERM
    (torchrun then sends it again to its ranks). The ranks write one checkpoint and end 143; torchrun
    reports the signal in its own way. A single process resumes the run."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    _, run, proc = _start(tmp_path, launcher)
    _wait_for(lambda: _ticks(run) >= 2, proc, "two ticks")
    os.killpg(proc.pid, signal.SIGTERM)
    rc, out, err = _finish(proc)
    assert "stopped at kimg" in err and "killed by signal" not in err, err[-3000:]
    assert err.count("SIGTERM: writing a checkpoint") == 1  # rank 0 speaks for both
    (checkpoint,) = list_checkpoints(run)
    stopped = _stopped_kimg(run)
    assert stopped * 1000 % 32 == 0 and stopped >= 0.064
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["kimg"] <= stopped

    total = f"{stopped + 0.064:.3f}"
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run), "--total-kimg", total, "--workers", "0",
                                       "--threads", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert _stopped_kimg(run) >= float(total)


def _sigterm_in_the_start_window(worker_id: int) -> None:
    """A SIGTERM from outside (as `timeout` or torchrun send it to the group) that lands after torch's worker
    start installed its own SIGTERM handler and before the run's worker_init_fn ignores it."""
    os.kill(os.getpid(), signal.SIGTERM)  # the sender is not the worker's parent: torch's handler kills
    ignore_in_worker(worker_id)


@pytest.mark.parametrize("held", [False, True], ids=["unheld: the worker dies", "held: it lives"])
def test_a_sigterm_while_workers_start_kills_none_when_held(tmp_path, held):
    """The window is real (unheld, the worker dies of it and the stream breaks, as a torchrun rank's did in
    CI), and holding the signals while forking closes it: the worker drops the signal and serves the batch."""
    data = photo_pyramid(tmp_path / "photos.h5", 8)
    hold = held_while_forking() if held else contextlib.nullcontext()
    with hold:
        stream = reals_stream(data, 8, 4, 0, seed=0, mirror=False, workers=1,
                              worker_init_fn=_sigterm_in_the_start_window)
    if held:
        assert next(stream).shape == (4, 3, 8, 8)
    else:
        with pytest.raises(RuntimeError, match="DataLoader worker"):
            next(stream)
    del stream
