"""The ``reasonrec`` command: one sub-command group per stage, and ``reasonrec run CONFIG.yaml``.

Sub-command modules import heavy libraries (torch, transformers) inside their commands, so ``reasonrec --help``
stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ReasonRecError
from .data import app as data_app
from .llm import app as llm_app
from .rec import app as rec_app
from .report import compare as compare_command
from .report import report as report_command
from .report import serve as serve_command
from .results import results as results_command
from .train import app as train_app

app = typer.Typer(
    name="reasonrec",
    help="Deliberate LLM reasoning for recommender systems (R4ec, TrackRec, STARec, ThinkRec).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data", help="Read raw datasets, apply split protocols, print statistics.")
app.add_typer(llm_app, name="llm", help="Generate text and score answers with any LLM backend.")
app.add_typer(rec_app, name="rec", help="Train and evaluate CTR backbones and classic recommenders.")
app.add_typer(train_app, name="train", help="LLM trainers: LoRA SFT, softmax-DPO, GRPO, Yes/No, experts.")
app.command(name="results")(results_command)
app.command(name="report")(report_command)
app.command(name="compare")(compare_command)
app.command(name="serve")(serve_command)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).")],
    run_dir: Annotated[Path | None, typer.Option(help="Run directory; default: the config's run_dir.")] = None,
    data_dir: Annotated[Path | None, typer.Option(envvar="REASONREC_DATA_DIR",
                                                     help="Folder with the raw dataset files.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only check the config: resolve every model, adapter, "
                                          "encoder, backbone and data file it names; run nothing.")] = False,
    engine: Annotated[str | None, typer.Option(help="Where LLM calls run: local or ray (overrides engine.kind; "
                                               "README, 'Running on a cluster').")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (implies --engine ray), e.g. "
                                                "ray://head:10001 or head:6379.")] = None,
) -> None:
    """Run a whole experiment; completed stages are skipped, an interrupted one resumes. Every name the config
    gives is checked first (``--dry-run`` stops there)."""
    from ..methods import check_experiment, load_experiment, resolve_paths, run_loaded

    module, cfg = load_experiment(config)
    if dry_run:
        resolve_paths(cfg, run_dir, data_dir, engine, address)
        check_experiment(module, cfg, str(config))
        typer.echo(f"{config}: ok — every model, encoder, backbone and data file it names resolves; "
                   f"run dir {cfg.run_dir}")
        return
    run_loaded(module, cfg, run_dir=run_dir, data_dir=data_dir, source=str(config), engine=engine, address=address)
    root = Path(cfg.run_dir).resolve()
    from ..eval.report import write_report
    from ..eval.results import ResultsError
    from .results import print_run_summary

    if (root / "results.json").exists():  # the captioned table and the warnings, not results.md's JSON blocks
        print_run_summary(root)
    typer.echo(f"results: {root / 'results.json'}")
    try:  # the report's path is the run's last line: what to open next
        typer.echo(f"report: {write_report([root])}")
    except ResultsError as err:  # e.g. a method that does not write the results schema yet
        typer.secho(f"warning: no report written: {err}", fg=typer.colors.YELLOW, err=True)


@app.command()
def bench(
    config: Annotated[Path, typer.Argument(help="Bench YAML (configs/bench/): method configs and baselines.")],
    data_dir: Annotated[Path | None, typer.Option(envvar="REASONREC_DATA_DIR",
                                                     help="Folder with the raw dataset files.")] = None,
) -> None:
    """Run every method config of a bench file, the classic baselines on each method's split, and print one
    leaderboard per split (markdown and HTML paths written under the bench's run_root)."""
    from ..bench import run_bench

    for group in run_bench(config, data_dir=data_dir, echo=typer.echo):
        typer.echo(f"\n{group['dataset']} · {group['protocol']} · split {group['split_checksum'][:16]}")
        typer.echo(group["board"].markdown())
        typer.echo(f"report: {group['report']}")


@app.command()
def version() -> None:
    """Print the package version."""
    from .. import __version__

    typer.echo(__version__)


def flag_error(err, argv: list[str]) -> str:
    """One line for a pydantic ``ValidationError`` raised by values that came from command-line flags: each
    field is named by its flag (``epochs`` → ``--epochs``) when the command line gave that flag."""
    parts = []
    for e in err.errors():
        field = str(e["loc"][-1]) if e["loc"] else ""
        flag = "--" + field.replace("_", "-")
        given = any(a == flag or a.startswith(flag + "=") for a in argv)
        where = flag if given else f"option '{field}'"
        msg = e["msg"][:1].lower() + e["msg"][1:]
        parts.append(f"{where}: {msg} (got {e.get('input')!r})")
    return "; ".join(parts)


def main() -> None:
    from pydantic import ValidationError

    try:
        app()
    except ReasonRecError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except ValidationError as err:  # a flag's value broke a config's constraint: one line, not pydantic's trace
        typer.secho(f"error: {flag_error(err, sys.argv[1:])}", fg=typer.colors.RED, err=True)
        sys.exit(2)
