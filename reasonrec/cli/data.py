"""`reasonrec data ...` commands: stats, prepare, fetch, tables.

pandas and the data layer are imported inside the commands so ``reasonrec --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError

app = typer.Typer(no_args_is_help=True)

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="ml-100k, ml-1m, amazon or yelp.")]
ProtocolOpt = Annotated[str, typer.Option("--protocol", "-p", help="collm, kar, starec or tallrec.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", envvar="REASONREC_DATA_DIR",
                                                    help="Folder with the raw dataset files.")]
CategoryOpt = Annotated[str | None, typer.Option("--category", help="Amazon category, e.g. Books, Gift_Cards.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random choice of the protocol.")]
OptionOpt = Annotated[list[str] | None, typer.Option(
    "--option", "-o", help="Protocol option KEY=VALUE (YAML value), repeatable, e.g. -o history_len=20.")]


def _options(pairs: list[str] | None) -> dict:
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--option {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def _splits(dataset, protocol, data_dir, category, seed, option):
    from ..data import load_tables, make_splits

    tables = load_tables(dataset, data_dir, category)
    return make_splits(tables, protocol, seed=seed, **_options(option))


@app.command()
def stats(dataset: DatasetOpt, protocol: ProtocolOpt, data_dir: DataDirOpt = None, category: CategoryOpt = None,
          seed: SeedOpt = 0, option: OptionOpt = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Apply a split protocol and print its statistics (samples per split, users, items, positive rate)."""
    result = _splits(dataset, protocol, data_dir, category, seed, option).stats()
    if as_json:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:>22}: {value}")


@app.command()
def prepare(dataset: DatasetOpt, protocol: ProtocolOpt,
            out: Annotated[Path, typer.Option("--out", help="Folder for train/valid/test.parquet + splits.json.")],
            data_dir: DataDirOpt = None, category: CategoryOpt = None, seed: SeedOpt = 0,
            option: OptionOpt = None) -> None:
    """Apply a split protocol and write the samples as Parquet (atomically)."""
    splits = _splits(dataset, protocol, data_dir, category, seed, option)
    splits.save(out)
    s = splits.stats()
    typer.echo(f"wrote {out}: train {s['train']}, valid {s['valid']}, test {s['test']}")


@app.command()
def fetch(name: Annotated[str, typer.Argument(help="ml-100k, ml-1m or amazon (with --category).")],
          dest: Annotated[Path | None, typer.Option("--dest", envvar="REASONREC_DATA_DIR",
                                                       help="Data folder to download into.")] = None,
          category: CategoryOpt = None,
          url: Annotated[str | None, typer.Option("--url", help="Mirror URL instead of the official one.")] = None,
          sha256: Annotated[str | None, typer.Option("--sha256", help="Expected sha256 of the download.")] = None,
          ) -> None:
    """Download a dataset from its official URL and verify its checksums."""
    from ..data import fetch as do_fetch

    folder = do_fetch(name, dest, category=category, url=url, sha256=sha256)
    typer.echo(f"{name}: files verified in {folder}")


@app.command()
def tables(dataset: DatasetOpt, data_dir: DataDirOpt = None, category: CategoryOpt = None) -> None:
    """Read a dataset's raw files into canonical tables (cached) and print a summary as JSON."""
    from ..data import load_tables

    t = load_tables(dataset, data_dir, category)
    typer.echo(json.dumps({**t.summary(), "domain": t.domain, "checksums": t.checksums}))
