"""`reasonrec bench BENCH.yaml`: every method's config, the classic baselines on each method's own split, then
one leaderboard per split (:func:`reasonrec.eval.report.compare_runs`).

A bench file lists method configs, one line each (``configs/bench/ml100k-cpu.yaml``); adding a method to the
bench is adding its config's path. For each:

1. the method runs in its config's own ``run_dir`` (so a run made before with ``reasonrec run`` is reused:
   complete stages are skipped);
2. the classic baselines (``baselines``: Pop, MF, BPR, LightGCN, SASRec, GRU4Rec...) are trained on exactly the
   samples the method was evaluated on — the method's ``evaluated_splits(cfg, run)`` hook gives them — and
   their per-sample test predictions written as a run of their own (``<run_root>/<run name>-baselines``) whose
   ``results.json`` carries the same dataset, protocol and split checksum, so ``compare`` pairs them sample by
   sample with the method's rows.

Runs are then grouped by (dataset, protocol, split checksum) and each group gets one leaderboard (markdown in
``<run_root>/leaderboard.md``, HTML in ``<run_root>/report-<k>.html``). Methods on different protocols (R4ec:
``kar``; TrackRec: ``collm``) land in different groups: their numbers are not comparable, and the bench says so
rather than put them in one table.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from pydantic import Field

from . import io
from .config import Section, read_yaml, validate
from .errors import ConfigError
from .eval import results as R


class BenchConfig(Section):
    """Fields: run_root (baseline runs, leaderboards); methods: method config paths (as written from the
    repository root, i.e. relative to the working directory, or absolute); baselines: classic baselines
    (:data:`~reasonrec.rec.baselines.BASELINES`);
    baseline_seeds; baseline_epochs (maximum: early stopping on the method's validation rows when it has them);
    results: how the baselines' rows are summarised (the intervals compare uses)."""

    run_root: Path
    methods: list[Path] = Field(min_length=1)
    baselines: list[str] = Field(default_factory=lambda: ["pop", "mf", "bpr", "lightgcn", "sasrec", "gru4rec"])
    baseline_seeds: list[int] = Field(default_factory=lambda: [0])
    baseline_epochs: int = Field(50, ge=1)
    results: R.ResultsSection = Field(default_factory=lambda: R.ResultsSection(reference="classic",
                                                                              subgroups=False))


def load_bench(path: str | Path) -> BenchConfig:
    cfg = validate(BenchConfig, read_yaml(path), str(path))
    from .rec.baselines import BASELINES

    unknown = [b for b in cfg.baselines if b.removesuffix("_full") not in BASELINES]
    if unknown:
        raise ConfigError(f"{path}: key 'baselines': unknown {unknown} (known: {', '.join(BASELINES)})")
    return cfg


def baseline_run(splits, tables, out: Path, cfg: BenchConfig, source: dict) -> Path:
    """The classic baselines on ``splits``: a run directory with per-sample predictions and ``results.json``
    on the same split checksum as the method run ``source`` describes (skipped when already written for it)."""
    from .rec.baselines import train_baseline
    from .rec.baselines.data import eval_set
    from .runs import package_versions

    checksum = R.splits_checksum(splits)
    if checksum != source["split_checksum"]:  # the hook must give the samples the method's results are of
        raise ConfigError(f"bench: the splits of {source['run']} hash to {checksum[:12]}, its results.json says "
                          f"{source['split_checksum'][:12]}; the method's evaluated_splits does not match its run")
    done = out / "results.json"
    if done.is_file():
        res, _ = R.read_results(out)
        if res.split_checksum == checksum and sorted({r.model for r in res.rows}) == sorted(cfg.baselines):
            return out
    out.mkdir(parents=True, exist_ok=True)
    frames, seconds = [], {}
    for name in cfg.baselines:
        for seed in cfg.baseline_seeds:
            t0 = time.monotonic()
            _, rec = train_baseline(name, splits, tables, {"seed": seed, "epochs": cfg.baseline_epochs},
                                    return_model=True)
            test = eval_set(splits.test, rec._resolved().max_len)
            if test.candidates is not None:
                raise ConfigError(f"bench: {source['run']} is a ranking split; the bench compares pointwise "
                                  "protocols only (the leaderboard's metrics are per-sample probabilities)")
            probs = rec.score(test.user_ids, test.item_ids, test.hist)  # σ(logit), what train_baseline reports
            frames.append(R.prediction_frame(name, "classic", seed, splits.test["user_id"], splits.test["label"],
                                             probs))
            seconds[f"{name}/{seed}"] = round(time.monotonic() - t0, 2)
    preds = pd.concat(frames, ignore_index=True)
    io.write_parquet(out / "predictions.parquet", preds)
    res = R.build_results(preds, cfg.results, method="baselines", dataset=source["dataset"],
                          protocol=source["protocol"], split_checksum=checksum,
                          config={"baselines": cfg.baselines, "seeds": cfg.baseline_seeds,
                                  "epochs": cfg.baseline_epochs, "split_of": source["run"]},
                          packages=package_versions(), predictions="predictions.parquet",
                          details={"split_of": source["run"], "fit_seconds": seconds})
    R.write_results(out, res, R.Timings(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), stage_seconds=seconds))
    return out


def run_bench(path: str | Path, data_dir: str | Path | None = None, echo=print) -> list[dict]:
    """Run the bench file at ``path``; returns one record per split group (its runs and leaderboard)."""
    from .eval.report import compare_runs, write_report
    from .methods import load_experiment, run_loaded
    from .runs import RunDir

    path = Path(path)
    cfg = load_bench(path)
    runs: list[Path] = []
    for method_cfg in cfg.methods:
        module, mcfg = load_experiment(method_cfg)
        echo(f"bench: {method_cfg} ({mcfg.method}) → {mcfg.run_dir}")
        run_loaded(module, mcfg, data_dir=data_dir, source=str(method_cfg))
        root = Path(mcfg.run_dir)
        res, _ = R.read_results(root)
        hook = getattr(module, "evaluated_splits", None)
        runs.append(root)
        if hook is None or not cfg.baselines:
            echo(f"bench: {mcfg.method} names no evaluated_splits; no baselines on its split")
            continue
        run = RunDir(root)
        with run.lock():
            splits, tables = hook(mcfg, run)
        out = Path(cfg.run_root) / f"{root.name}-baselines"
        runs.append(baseline_run(splits, tables, out, cfg, {"run": str(root), "dataset": res.dataset,
                                                              "protocol": res.protocol,
                                                              "split_checksum": res.split_checksum}))
    groups: dict[tuple, list[Path]] = {}
    for root in runs:
        res, _ = R.read_results(root)
        groups.setdefault((res.dataset, res.protocol, res.split_checksum), []).append(root)
    out_root = Path(cfg.run_root)
    out_root.mkdir(parents=True, exist_ok=True)
    md, records = [f"# Leaderboards of {path}", ""], []
    for k, ((dataset, protocol, checksum), dirs) in enumerate(groups.items(), 1):
        board = compare_runs(dirs)
        html = write_report(dirs, out_root / f"report-{k}.html")
        md += [f"## {k}. {dataset} · protocol {protocol} · split `{checksum[:16]}`", "",
               "runs: " + ", ".join(f"`{d}`" for d in dirs), "", board.markdown(), "", f"HTML: `{html}`", ""]
        records.append({"dataset": dataset, "protocol": protocol, "split_checksum": checksum,
                        "runs": [str(d) for d in dirs], "report": str(html), "board": board})
    if len(groups) > 1:
        md += ["Runs in different groups were made on different samples (dataset, protocol or subset): "
               "`reasonrec compare` refuses to put them in one table.", ""]
    io.write_text(out_root / "leaderboard.md", "\n".join(md))
    return records
