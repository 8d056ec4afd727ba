"""What signals mean to a training run, in its main process and in its DataLoader workers.

- SIGINT (Ctrl-C) and SIGTERM (`timeout`, `kill`, systemd, Slurm at a job's end, torchrun passing either on):
  the loop stops at its next schedule update with a checkpoint; `progan train` exits 128 + the signal's
  number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process the signal ended.
- SIGUSR1 (Slurm's pre-emption warning, `#SBATCH --signal=B:USR1@90`): a checkpoint at the next schedule
  update, and training goes on.
- A second SIGINT aborts at once, without a checkpoint, except in a torchrun rank: torchrun passes the
  group's SIGINT on to its ranks a second time, milliseconds after the terminal delivered it. Repeated
  SIGTERMs are ignored for the same reason (torchrun and srun pass it on); SIGKILL is the hard stop.

Terminals, `timeout`, Slurm and systemd signal the whole process group, DataLoader workers included. A worker
that a SIGTERM kills makes the main process raise "DataLoader worker ... killed by signal" wherever it
happens to be, and no checkpoint is written. So the workers ignore all three signals (`ignore_in_worker`,
their worker_init_fn): the main process alone acts on them, and the checkpoint needs nothing from the
workers (its state lives in the main process). The workers end when the main process releases the loader,
or by themselves when it is gone (torch's worker watchdog).

A worker cannot ignore anything before its worker_init_fn runs, and torch's worker start installs a SIGTERM
handler of its own first, one that kills the worker for a SIGTERM from anyone but its parent (`timeout`,
Slurm, torchrun all send it to the group). A signal in that window, a few milliseconds at each resolution
switch, killed a rank's worker and hung a torchrun job until torchrun's SIGKILL. So the main process holds
(blocks) the three signals while it forks the workers (`held_while_forking`), each worker inherits the
hold, ignores them and only then lets them through: one that arrived meanwhile is dropped in the worker and
delivered to the main process as soon as the forks are done.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CHECKPOINT_SIGNAL = getattr(signal, "SIGUSR1", None)  # absent on Windows
HANDLED = (*STOP_SIGNALS, *([CHECKPOINT_SIGNAL] if CHECKPOINT_SIGNAL is not None else []))


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class SignalRequests:
    """Installs the handlers for the duration of a `with` block and records what the signals asked for.

    The loop polls `stop_requested` and `checkpoint_requested` at each schedule update: Python runs signal
    handlers between bytecodes of the main thread, so they only set flags and say what will happen.
    """

    def __init__(self, notify: Callable[[str], None] = _stderr) -> None:
        self.notify = notify
        self.stop_signal: int | None = None  # the first SIGINT/SIGTERM received
        self._checkpoint = False
        # torchrun sets TORCHELASTIC_RUN_ID in its ranks; they receive a Ctrl-C twice (see module docstring).
        self._abort_on_second_sigint = "TORCHELASTIC_RUN_ID" not in os.environ

    def __enter__(self) -> SignalRequests:
        self._pid = os.getpid()  # a forked worker runs the inherited handler until its worker_init_fn
        self._previous = {sig: signal.getsignal(sig) for sig in HANDLED}
        for sig in HANDLED:
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return
        name = signal.Signals(signum).name
        if signum == CHECKPOINT_SIGNAL:
            self._checkpoint = True
            self.notify(f"{name}: writing a checkpoint at the next schedule update; training goes on")
        elif self.stop_signal is None:
            self.stop_signal = signum
            again = " (Ctrl-C again to abort at once)" if self._abort_on_second_sigint else ""
            self.notify(f"{name}: writing a checkpoint, then stopping{again}")
        elif signum == signal.SIGINT and self._abort_on_second_sigint:
            raise KeyboardInterrupt

    def stop_requested(self) -> bool:
        return self.stop_signal is not None

    def checkpoint_requested(self) -> bool:
        """True once per SIGUSR1 (the request is consumed)."""
        asked, self._checkpoint = self._checkpoint, False
        return asked

    @property
    def exit_code(self) -> int:
        """128 + the stop signal's number, as a shell reports a process that signal ended; 0 without one."""
        return 128 + self.stop_signal if self.stop_signal is not None else 0


@contextlib.contextmanager
def held_while_forking() -> Iterator[None]:
    """Block SIGINT, SIGTERM and SIGUSR1 in this thread (the one that forks the DataLoader workers) for the
    `with` block; what arrived meanwhile is delivered at its end (see the module docstring)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no fork, no mask
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: leave SIGINT, SIGTERM and SIGUSR1 sent to the process group to the main
    process (see the module docstring), then lift the hold the worker inherited."""
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
