"""How wide are the intervals of the R4ec CPU study? Its samples (configs/r4ec/ml100k-cpu.yaml: ML-100K kar,
30 users, 40 items, seed 0; 54 test samples), its four backbones and three seeds, with two variants: ``base``
(no knowledge; the study's own base rows) and ``noise`` (knowledge vectors of seeded Gaussian noise, 384-d like
MiniLM: a variant that carries no information about the labels, so it cannot truly gain). The table is the results schema's
(user bootstrap, paired Δ vs base).

    python benchmarks/results_intervals.py --data-dir DIR --out runs/results-intervals
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from reasonrec.config import DataSection
from reasonrec.eval import results as R
from reasonrec.methods.common import prepare_splits, train_knowledge_backbones
from reasonrec.methods.r4ec import RecSection, SubsetSection
from reasonrec.runs import RunDir, package_versions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/results-intervals"))
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    t0 = time.time()
    data = DataSection(dataset="ml-100k", protocol="kar", data_dir=args.data_dir)
    ctx = prepare_splits(data, RunDir(args.out, verbose=False), subset=SubsetSection(users=30, items=40))
    rng = np.random.default_rng(0)
    noise = {side: rng.normal(size=(ctx.n_entities(side) + 1, 384)).astype(np.float32) for side in ("user", "item")}
    rec = RecSection(backbones=["din", "dcn", "autoint", "gru4rec_ctr"], seeds=[0, 1, 2], epochs=10, batch_size=256)
    preds: list[pd.DataFrame] = []
    train_knowledge_backbones(ctx.splits, ctx.tables, {"base": None, "noise": noise}, rec, predictions=preds)
    s = ctx.splits
    preds_df = R.attach_subgroups(pd.concat(preds, ignore_index=True), s.test, s.train)
    (args.out / "rec").mkdir(parents=True, exist_ok=True)
    preds_df.to_parquet(args.out / "rec" / "predictions.parquet")  # `reasonrec results --reference` reads it
    res = R.build_results(preds_df, R.ResultsSection(n_boot=args.n_boot), method="results-intervals",
                          dataset=s.dataset, protocol=s.protocol,
                          split_checksum=R.split_checksum({"train": s.train, "valid": s.valid, "test": s.test}),
                          config={"rec": rec.model_dump(mode="json")}, packages=package_versions(),
                          predictions="rec/predictions.parquet")
    R.write_results(args.out, res)
    print(R.render_markdown(res))
    print(f"{len(s.test)} test samples, {s.test['user_id'].nunique()} users; {time.time() - t0:.0f} s wall; "
          f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
