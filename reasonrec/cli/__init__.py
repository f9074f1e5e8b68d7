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


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).")],
    run_dir: Annotated[Path | None, typer.Option(help="Run directory; default: the config's run_dir.")] = None,
    data_dir: Annotated[Path | None, typer.Option(envvar="REASONREC_DATA_DIR",
                                                     help="Folder with the raw dataset files.")] = None,
) -> None:
    """Run a whole experiment; completed stages are skipped, an interrupted one resumes."""
    from ..methods import load_experiment, run_loaded

    module, cfg = load_experiment(config)
    run_loaded(module, cfg, run_dir=run_dir, data_dir=data_dir)
    root = cfg.run_dir
    table = root / "results.md"
    if table.exists():
        typer.echo(table.read_text())
    typer.echo(f"results: {root / 'results.json'}")


@app.command()
def version() -> None:
    """Print the package version."""
    from .. import __version__

    typer.echo(__version__)


def main() -> None:
    try:
        app()
    except ReasonRecError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
