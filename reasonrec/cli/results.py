"""`reasonrec results RUN_DIR`: a run's results table with intervals and paired deltas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def results(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding results.json.")],
    reference: Annotated[str | None, typer.Option(
        help="Variant the deltas are taken against; default the one stored in results.json. Another variant "
             "recomputes the deltas from the run's saved predictions.")] = None,
    metric: Annotated[str, typer.Option(help="Metric of the table (auc, uauc, logloss, acc, ndcg@K ...).")] = "auc",
    subgroup: Annotated[str, typer.Option(help="Subgroup: all, warm, cold, activity:... (see results.json).")] = "all",
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the markdown table (results.md).")] = False,
) -> None:
    """Print the table of a run: every model × variant with its interval, the spread over seeds and the paired
    Δ vs the reference variant with its interval and p-value."""
    from rich.console import Console
    from rich.table import Table

    from ..errors import ConfigError
    from ..eval.results import read_results, recompute, render_markdown, table_records

    res, timings = read_results(run_dir)
    if reference is not None and reference != res.reference:
        res = recompute(run_dir, reference)
    if markdown:
        typer.echo(render_markdown(res, metric))
        return
    records = table_records(res, metric, subgroup)
    if not records:
        have = sorted({(r.metric, r.subgroup) for r in res.rows})
        raise ConfigError(f"{run_dir}: no rows for metric '{metric}' and subgroup '{subgroup}'; the run has "
                          + ", ".join(f"{m}/{s}" for m, s in have[:20]))
    level = f"{round(res.confidence * 100)}%"
    table = Table(title=f"{res.method} · {res.dataset} · {res.protocol} · {metric} · subgroup {subgroup}",
                  caption=f"user bootstrap, {res.n_boot} replicates, mean over seeds; Δ paired vs "
                          f"{res.reference}; split {res.split_checksum[:12]}")
    for col, justify in (("model", "left"), ("variant", "left"), ("n", "right"), (metric, "right"),
                         (f"{level} CI", "right"), ("± sd seeds", "right"), (f"Δ vs {res.reference}", "right"),
                         (f"Δ {level} CI", "right"), ("p", "right")):
        table.add_column(col, justify=justify)
    for r in records:
        table.add_row(r["model"], r["variant"], r["n"], r["value"], r["ci"], r["seed_sd"], r["delta"],
                      r["delta_ci"], r["p"])
    console = Console(width=max(120, Console().width))
    console.print(table)
    if timings is not None:
        console.print(f"created {timings.created}; stage seconds {timings.stage_seconds}")
