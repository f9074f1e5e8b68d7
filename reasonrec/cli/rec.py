"""`reasonrec rec ...` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def train(
    model: Annotated[str, typer.Option(help="CTR backbone (din, dien, gru4rec_ctr, autoint, fignn, fibinet, dcn, "
                                            "dcnv2, deepfm) or baseline (pop, mf, bpr, lightgcn, sasrec, gsasrec, "
                                            "gru4rec; '_full' suffix for starec).")] = "din",
    dataset: Annotated[str, typer.Option(help="ml-100k, ml-1m, amazon, yelp.")] = "ml-100k",
    protocol: Annotated[str, typer.Option(help="collm, kar, starec, tallrec.")] = "collm",
    data_dir: Annotated[Path | None, typer.Option(envvar="REASONREC_DATA_DIR", help="Raw dataset folder.")] = None,
    category: Annotated[str | None, typer.Option(help="Amazon category.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, init and shuffling.")] = 0,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (early stopping on valid AUC); default: the model's (CTR 20).")] = None,
    batch_size: Annotated[int, typer.Option()] = 1024,
    lr: Annotated[float, typer.Option()] = 1e-3,
    embedding_dim: Annotated[int, typer.Option()] = 32,
    connector: Annotated[str, typer.Option(help="mlp, moe or hybrid.")] = "mlp",
    item_knowledge: Annotated[str | None, typer.Option(
        help="Add an item knowledge field: titles + genres encoded by this encoder (e.g. 'minilm').")] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads (1 is fastest on a shared machine).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train one recommender on a dataset split and print its test metrics."""
    import torch

    from ..data import load_tables, make_splits
    from ..rec.baselines import BASELINES, train_baseline
    from ..rec.ctr import CTR_MODELS, CTRModelConfig
    from ..rec.pipeline import item_text_knowledge, run_ctr
    from ..rec.trainer import CTRTrainConfig

    torch.set_num_threads(threads)
    base = model.lower().removesuffix("_full")
    if model in CTR_MODELS:  # the flags' values are checked before the data is read
        model_cfg = CTRModelConfig(embedding_dim=embedding_dim, connector=connector)
        train_cfg = CTRTrainConfig(epochs=20 if epochs is None else epochs, batch_size=batch_size, lr=lr, seed=seed,
                                   progress=not as_json)
    tables = load_tables(dataset, data_dir, category)
    splits = make_splits(tables, protocol, seed=seed)
    if model in CTR_MODELS:
        knowledge = [item_text_knowledge(tables, item_knowledge, progress=not as_json)] if item_knowledge else []
        res = run_ctr(model, splits, tables, model_cfg, train_cfg, knowledge=knowledge)
        res.pop("history", None)
    elif base in BASELINES:
        res = train_baseline(model, splits, tables, {"seed": seed, **({} if epochs is None else {"epochs": epochs})},
                             progress=not as_json)
    else:
        from ..errors import ConfigError

        raise ConfigError(f"--model '{model}': unknown; choose a CTR model ({', '.join(CTR_MODELS)}) or a baseline "
                          f"({', '.join(BASELINES)})")
    res = {"model": model, "dataset": dataset, "protocol": protocol, "seed": seed, **res}
    if as_json:
        typer.echo(json.dumps(res, default=float))
    else:
        for k, v in res.items():
            typer.echo(f"{k:>22}: {v:.4f}" if isinstance(v, float) else f"{k:>22}: {v}")
