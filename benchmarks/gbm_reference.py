"""A gradient-boosting reference on five statistics next to the CTR backbones, ML-100K ``collm`` (issue 15).

Usage::

    python benchmarks/gbm_reference.py --data-dir DIR                 # GBM vs DIN, DeepFM, DCN, seeds 0-2
    python benchmarks/gbm_reference.py --data-dir DIR --models din --seeds 0

The five statistics of a sample, all from interactions strictly before it or from the training months:

1.-3. the mean label, the mean rating and the count of the sample's previous 10 interactions (its history, as the
   ``collm`` protocol attaches it: the user's last 10 interactions before the sample's timestamp);
4.-5. the item's smoothed mean training label ``(positives + m·p) / (count + m)`` with the training positive rate
   ``p`` and ``m = 10``, and the item's training count (0 for an item with no training row).

For a training sample, 4.-5. are the training-set statistics of its item, its own label included (scikit-learn
fitted on what it will be scored with; leave-one-out statistics shift their distribution between train and test
and score worse: test AUC 0.668 with ``HistGradientBoostingClassifier``, seed 0). Both scikit-learn gradient boosting
classifiers run with their default settings (``random_state=seed``). The CTR backbones run through
:func:`reasonrec.rec.pipeline.run_ctr` with their default settings, i.e. what
``reasonrec rec train --model NAME --dataset ml-100k --protocol collm --seed SEED`` does. The script prints the
machine's load average: on a shared machine the seconds are not comparable between runs, the AUCs are.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reasonrec.data import load_tables, make_splits  # noqa: E402
from reasonrec.eval.metrics import auc  # noqa: E402

SMOOTHING = 10.0


def five_statistics(df, train) -> np.ndarray:
    """(N, 5) float array of the five statistics of the samples ``df`` (see the module docstring)."""
    prior = float(train["label"].mean())
    stats = train.groupby("item_id")["label"].agg(["sum", "count"])
    pos = df["item_id"].map(stats["sum"]).fillna(0.0).to_numpy(float)
    cnt = df["item_id"].map(stats["count"]).fillna(0.0).to_numpy(float)
    lens = df["hist_labels"].map(len).to_numpy(float)
    mean_label = np.array([float(np.mean(a)) if len(a) else 0.0 for a in df["hist_labels"]])
    mean_rating = np.array([float(np.mean(a)) if len(a) else 0.0 for a in df["hist_ratings"]])
    return np.c_[mean_label, mean_rating, lens, (pos + SMOOTHING * prior) / (cnt + SMOOTHING), cnt]


def gbm_rows(splits, seed: int) -> list[dict]:
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier

    tr = splits.train
    x = {k: five_statistics(getattr(splits, k), tr) for k in ("train", "valid", "test")}
    rows = []
    for name, clf in (("gbm_hist", HistGradientBoostingClassifier(random_state=seed)),
                      ("gbm", GradientBoostingClassifier(random_state=seed))):
        t0 = time.monotonic()
        clf.fit(x["train"], tr["label"].to_numpy())
        rows.append({"model": name, "seed": seed, "seconds": time.monotonic() - t0,
                     "valid": auc(splits.valid["label"].to_numpy(), clf.predict_proba(x["valid"])[:, 1]),
                     "test": auc(splits.test["label"].to_numpy(), clf.predict_proba(x["test"])[:, 1])})
    # item popularity alone: the item's smoothed mean training label (statistic 4)
    rows.append({"model": "item_mean_label", "seed": seed, "seconds": 0.0,
                 "valid": auc(splits.valid["label"].to_numpy(), x["valid"][:, 3]),
                 "test": auc(splits.test["label"].to_numpy(), x["test"][:, 3])})
    return rows


def ctr_row(name: str, splits, tables, seed: int) -> dict:
    from reasonrec.rec.pipeline import run_ctr
    from reasonrec.rec.trainer import CTRTrainConfig

    t0 = time.monotonic()
    res = run_ctr(name, splits, tables, train_cfg=CTRTrainConfig(seed=seed, progress=False))
    return {"model": name, "seed": seed, "seconds": time.monotonic() - t0, "valid": res["valid/auc"],
            "test": res["auc"], "best_epoch": res["best_epoch"]}


def main() -> None:
    default = os.environ.get("REASONREC_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                                       "ml-100k"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=default, help="ML-100K folder (u.data ...)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="din,deepfm,dcn", help="CTR backbones ('' for the GBM only)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    tables = load_tables("ml-100k", args.data_dir)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        splits = make_splits(tables, "collm", seed=seed)
        for r in gbm_rows(splits, seed):
            rows.append(r)
            print(f"  [seed {seed}] {r['model']:16} valid {r['valid']:.4f} test {r['test']:.4f}", flush=True)
        for name in filter(None, args.models.split(",")):
            r = ctr_row(name, splits, tables, seed)
            rows.append(r)
            print(f"  [seed {seed}] {r['model']:16} valid {r['valid']:.4f} test {r['test']:.4f} "
                  f"(best epoch {r['best_epoch']}, {r['seconds']:.0f}s)", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    names = list(dict.fromkeys(r["model"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    ref = [r["test"] for r in rows if r["model"] == "gbm"]
    print(f"\n{'model':16} " + " ".join(f"{'test s' + str(s):>9}" for s in seeds) +
          f" {'test mean':>9} {'valid mean':>10} {'vs gbm':>8}")
    for n in names:
        mine = [r for r in rows if r["model"] == n]
        test = np.mean([r["test"] for r in mine])
        print(f"{n:16} " + " ".join(f"{r['test']:9.4f}" for r in mine) +
              f" {test:9.4f} {np.mean([r['valid'] for r in mine]):10.4f} {test - np.mean(ref):+8.4f}")


if __name__ == "__main__":
    main()
