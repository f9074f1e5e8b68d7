"""`reasonrec report RUN_DIR ...` (one self-contained HTML file + markdown) and `reasonrec compare RUN_DIR ...`
(one leaderboard across runs on the same split)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories holding results.json.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="HTML file to write; default "
                                                "RUN_DIR/report.html of the first run (report.md beside it).")] = None,
) -> None:
    """Write the report of one or more runs (results with intervals and plots, timings, config, versions, data
    checksums, generated texts; a leaderboard first when the runs share a split) and print its absolute path."""
    from ..eval.report import write_report

    typer.echo(str(write_report(run_dirs, output)))


def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories made on the same split.")],
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the markdown table.")] = False,
    n_boot: Annotated[int | None, typer.Option(help="Bootstrap replicates of the paired Δ; default the first "
                                               "run's.")] = None,
) -> None:
    """One leaderboard across runs on the same dataset, protocol and split checksum (refused otherwise), on the
    metrics they share, with paired Δ where their saved test predictions coincide."""
    from ..eval.report import compare_runs

    board = compare_runs(run_dirs, n_boot=n_boot)
    if markdown:
        typer.echo(board.markdown())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"leaderboard · {len(board.runs)} runs · same split",
                  caption=(f"Δ paired vs {board.paired_with}" if board.paired_with else "no paired Δ"))
    header, rows = board.brief()
    for col in header:
        table.add_column(str(col), no_wrap=True)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console(width=max(160, Console().width)).print(table)
    typer.echo("(every metric's interval and Δ: --markdown, or `reasonrec report` for the HTML)")


def serve(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default (no auth: do not expose).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="Concurrent score/rank requests coalesced into one CTR "
                                           "forward; 1 turns cross-request batching off.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(min=0.0, help="How long a batch waits for more requests.")] = 2.0,
) -> None:
    """Serve a finished run over HTTP: /healthz, /v1/model, /v1/users/{id}/explanation, POST /v1/score, /v1/rank."""
    import uvicorn

    from ..serve import create_app

    uvicorn.run(create_app(run_dir, max_batch=max_batch, max_wait_ms=max_wait_ms), host=host, port=port,
                log_level="info")
