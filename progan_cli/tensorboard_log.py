"""TensorBoard event files beside a run's log.jsonl (`progan train --tensorboard`, the optional `tensorboard` extra).

A consumer of the per-tick log line: the CLI hands it each line the training loop writes, so the loop never
imports tensorboard. Each numeric field becomes a scalar tagged `<group>/<field>` (loss, D score, gradient
penalty, images/s, metrics, schedule, clock), at step = real images shown (kimg x 1000), so TensorBoard's
step axis is the same one log.jsonl and `progan plot` use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from progan_cli.plot import field_group


def tag(field: str) -> str:
    """`loss_D` -> `loss/loss_D`, `img_per_s` -> `images_per_s/img_per_s`, `swd/16` -> `metrics/swd/16`."""
    return f"{field_group(field).replace(' ', '_').replace('/', '_per_')}/{field}"


def check_tensorboard() -> None:
    """Fail before any work, in one line naming the extra, when tensorboard is not installed."""
    from progan_cli.extras import require

    require("torch.utils.tensorboard", "tensorboard", "progan train --tensorboard")


class TensorBoardLog:
    """Writes each tick's log line into event files in `run_dir`.

    `resumed_nimg`: on a resumed run, the checkpoint's images shown; events a crashed session wrote after it
    are purged (TensorBoard's purge_step), as the loop truncates log.jsonl to the checkpoint's tick.
    """

    def __init__(self, run_dir: Path, resumed_nimg: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resumed_nimg is None else resumed_nimg + 1
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge)

    def __call__(self, line: dict[str, Any]) -> None:
        step = round(line["kimg"] * 1000)
        for field, value in line.items():
            if field not in ("tick", "kimg") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(field), value, global_step=step)
        self.writer.flush()  # a tick is minutes apart: make it visible now

    def close(self) -> None:
        self.writer.close()
