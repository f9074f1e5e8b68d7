"""What the knowledge window does to the CTR side, without an LLM (issue 17, deviation 1).

The "knowledge" of each user and item is its R4ec actor prompt itself (the [TITLE, RATING] history it shows),
encoded like LLM knowledge: with ``knowledge_window: train`` a user's prompt shows their own train CTR samples
with their ratings, i.e. the labels; with ``pre_sample`` it shows only interactions before their first sample.
Same ML-100K kar samples, same seeds, DIN with the MLP connector. A leak shows as validation AUC (held-out train
samples, which the train window also shows) far above test AUC.

    python benchmarks/r4ec_leakage.py --data-dir PATH/TO/ml-100k [--users 150 --items 150]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from reasonrec.config import DataSection
from reasonrec.knowledge import load_encoder
from reasonrec.methods import r4ec_steps as steps
from reasonrec.methods.common import prepare_splits, train_knowledge_backbones
from reasonrec.methods.r4ec import RecSection, SubsetSection
from reasonrec.runs import RunDir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--users", type=int, default=150)
    ap.add_argument("--items", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    start, out = time.time(), {}
    encoder = load_encoder("minilm")
    rec = RecSection(backbones=["din"], seeds=list(range(args.seeds)), epochs=args.epochs)
    for window in ("pre_sample", "train"):
        ctx = prepare_splits(DataSection(dataset="ml-100k", protocol="kar", data_dir=args.data_dir),
                             RunDir(Path(tempfile.mkdtemp()) / window),
                             subset=SubsetSection(users=args.users, items=args.items, knowledge_window=window))
        tables = {}
        for side in ("user", "item"):
            ids, fields = ctx.entities(side)
            texts = [steps.prompt(side, "reason", ctx.domain, f, with_target=False)[-1]["content"] for f in fields]
            table = np.zeros((ctx.n_entities(side) + 1, encoder.dim), np.float32)
            table[np.asarray(ids)] = encoder.encode(texts)
            tables[side] = table
        res = train_knowledge_backbones(ctx.splits, ctx.tables, {"base": None, window: tables}, rec)["din"]
        out[window] = {v: {"test_auc": r["auc"], "valid_auc": float(np.mean([x["valid/auc"] for x in r["runs"]])),
                           "test_auc_runs": [x["auc"] for x in r["runs"]]} for v, r in res.items()}
        out["samples"] = {"train": len(ctx.splits.train), "test": len(ctx.splits.test)}
        print(window, json.dumps(out[window]), flush=True)  # one line per window: a long run still reports
    out["seconds"], out["loadavg"] = round(time.time() - start, 1), os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
