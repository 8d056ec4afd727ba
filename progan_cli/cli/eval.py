"""`progan eval RUN [RUN2 ...] --metrics fid10k,kid10k,pr10k,is10k,swd,msssim`: every checkpoint of runs scored,
one line per checkpoint and metric in RUN/metrics.jsonl (resumable), and a table on stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from progan_cli.cli.common import Device, Threads, err_console, print_json, setup_device
from progan_cli.cli.metrics import BatchSize, JsonOut, NoCache, Protocol, Seed, Weights, _progress


def eval_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (their checkpoints) or checkpoint files.")],
    metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated: fid<N>, kid<N>, pr<N>, is<N>, "
                                         "swd[<N>], msssim[<N>]; N a count, k = thousands.")] = "fid10k",
    every: Annotated[Optional[int], typer.Option("--every", help="Only every K-th checkpoint of a run (and its "
                                                  "newest).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Pyramid of the real images [default: the one "
                                                 "each run trained on].")] = None,
    protocol: Protocol = "ttur",
    weights: Weights = None,
    no_cache: NoCache = False,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    threads: Threads = None,
    seed: Seed = 0,
    json_out: JsonOut = False,
) -> None:
    """Score every checkpoint of runs; already scored checkpoint+metric pairs are skipped."""
    from progan_cli.metrics.evaluate import evaluate_runs, parse_metrics

    specs = parse_metrics(metrics.split(","))

    def done(run_dir: Path, ckpt: Path, result) -> None:
        main = next(iter(result.results.values()))
        err_console.print(f"{ckpt} {result.metric} {main:.6g} ({result.seconds:.1f} s)", soft_wrap=True)

    report = evaluate_runs(runs, specs, every=every, data=data, device=setup_device(device, threads), seed=seed,
                           weights=weights, protocol=protocol, batch_size=batch_size, use_cache=not no_cache,
                           progress=_progress(), on_result=done)
    if json_out:
        print_json({"rows": report.rows, "written": report.written})
    else:
        print(_table(report.rows))


def _table(rows: list[dict]) -> str:
    """Checkpoints down, values across (per-level SWD left to --json), then one line per skipped metric."""
    columns = list(dict.fromkeys(k for row in rows for k in row["results"] if "/" not in k))
    head = ["run", "checkpoint", "res", *columns]
    body = [[row["run"], row["checkpoint"], str(row["res"] or "-"),
             *(f"{row['results'][c]:.6g}" if c in row["results"] else "-" for c in columns)] for row in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [head, *body]]
    skipped: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        for metric, reason in row["skipped"].items():
            skipped.setdefault((metric, reason), []).append(f"{row['res']}x{row['res']}")
    lines += [f"{metric}: skipped at {', '.join(dict.fromkeys(at))}: {reason}"
              for (metric, reason), at in skipped.items()]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
