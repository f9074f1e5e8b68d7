"""Parity of reasonrec's classic baselines (Pop, MF, BPR) with cornac on the identical ML-100K split.

Usage::

    python benchmarks/parity_baselines.py --data-dir DIR            # parity table (cornac vs ours)
    python benchmarks/parity_baselines.py --data-dir DIR --all      # + every baseline on collm and starec

``benchmarks/parity.py`` imports :func:`run_parity` (and :func:`run_all_baselines`) from this file.

Reference: cornac 3.0 (``pip install --no-deps cornac powerlaw``; cornac's own dependencies are already present),
the maintained PyPI package with MostPop, MF and BPR. Both sides get the same training samples, the same
embedding size and the same number of epochs; each uses its own optimiser (ours: Adam 1e-3; cornac: SGD).

* ``collm`` (pointwise AUC / UAUC on the test month): ours ``mf`` (BCE on the 0/1 labels) vs cornac ``MF``
  (biased MF regressing the 0/1 label — cornac's MF is a rating regressor, so the label is its rating); ours
  ``bpr`` vs cornac ``BPR``, both on the liked train samples; ours ``pop`` vs cornac ``MostPop`` (counts of liked
  train samples; ours uses the smoothed like-rate, see ``reasonrec.rec.baselines.models.Pop``).
* ``starec`` (NDCG@K of the held-out positive among 20 candidates, mean over 3 negative draws): ours ``bpr`` vs
  cornac ``BPR`` and ``pop`` vs ``MostPop``, on the same implicit training pairs (``build_train_data``).

Users or items cornac never saw get the neutral score cornac itself falls back to (global mean plus item bias
for unknown users; zero item part for unknown items).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reasonrec.data import load_tables, make_splits  # noqa: E402
from reasonrec.eval.metrics import pointwise_report, ranking_report  # noqa: E402
from reasonrec.rec.baselines import BASELINES, build_train_data, eval_set, train_baseline  # noqa: E402

DIM = 64
EPOCHS = {"collm": 30, "starec": 60}


def _cornac_matrix(model, train_set, n_users: int, n_items: int) -> np.ndarray:
    """Dense score matrix [n_users, n_items] indexed by *our* ids from a fitted cornac MF / BPR / MostPop."""
    s = np.zeros((n_users, n_items), dtype=np.float64)
    uid = np.array([int(u) for u in train_set.uid_map])
    uix = np.array([train_set.uid_map[u] for u in train_set.uid_map])
    iid = np.array([int(i) for i in train_set.iid_map])
    iix = np.array([train_set.iid_map[i] for i in train_set.iid_map])
    name = type(model).__name__
    if name == "MostPop":
        s[:, iid] = model.item_pop[iix]
        return s
    s += getattr(model, "global_mean", 0.0)
    if getattr(model, "i_biases", None) is not None and len(model.i_biases):
        s[:, iid] += model.i_biases[iix]
    if getattr(model, "u_biases", None) is not None and len(model.u_biases):
        s[uid, :] += model.u_biases[uix][:, None]
    s[np.ix_(uid, iid)] += model.u_factors[uix] @ model.i_factors[iix].T
    return s


def _fit_cornac(kind: str, users, items, ratings, epochs: int, seed: int):
    import cornac
    from cornac.data import Dataset

    triples = [(str(u), str(i), float(r)) for u, i, r in zip(users, items, ratings, strict=True)]
    ts = Dataset.from_uir(triples, seed=seed)
    if kind == "MF":
        m = cornac.models.MF(k=DIM, max_iter=epochs, learning_rate=0.01, lambda_reg=0.02, use_bias=True,
                             seed=seed, verbose=False)
    elif kind == "BPR":
        m = cornac.models.BPR(k=DIM, max_iter=epochs, learning_rate=0.01, lambda_reg=0.01, seed=seed,
                              verbose=False)
    else:
        m = cornac.models.MostPop()
    m.fit(ts)
    return m, ts


def run_parity(data_dir: str | Path, seed: int = 0) -> list[dict]:
    """Rows of {protocol, model, reference, metric, ours, ref, diff, ok, ours_s, ref_s}."""
    import torch

    torch.set_num_threads(1)  # tiny models: one thread beats two on a shared CPU
    tables = load_tables("ml-100k", data_dir)
    rows = []
    # ---- collm: pointwise
    sp = make_splits(tables, "collm", seed=seed)
    tr, te = sp.train, sp.test
    n_users, n_items = int(tables.interactions["user_id"].max()) + 1, int(tables.interactions["item_id"].max()) + 1
    tu, ti, ty = te["user_id"].to_numpy(), te["item_id"].to_numpy(), te["label"].to_numpy()
    liked = tr[tr["label"] == 1]
    pairs = [("mf", "MF", tr["user_id"], tr["item_id"], tr["label"]),
             ("bpr", "BPR", liked["user_id"], liked["item_id"], np.ones(len(liked))),
             ("pop", "MostPop", liked["user_id"], liked["item_id"], np.ones(len(liked)))]
    for ours_name, ref_name, u, i, r in pairs:
        t0 = time.monotonic()
        m, ts = _fit_cornac(ref_name, u.to_numpy(), i.to_numpy(), np.asarray(r), EPOCHS["collm"], seed)
        s = _cornac_matrix(m, ts, n_users, n_items)[tu, ti]
        ref_s = time.monotonic() - t0
        ref = pointwise_report(tu, ty, 1 / (1 + np.exp(-(s - s.mean()) / (s.std() + 1e-9))))  # AUCs: rank only
        t0 = time.monotonic()
        ours = train_baseline(ours_name, sp, tables, dict(dim=DIM, epochs=EPOCHS["collm"], seed=seed))
        ours_s = time.monotonic() - t0
        for metric in ("auc", "uauc"):
            rows.append(dict(protocol="collm", model=ours_name, reference=f"cornac.{ref_name}", metric=metric,
                             ours=ours[metric], ref=ref[metric], ours_s=ours_s, ref_s=ref_s))
    # ---- starec: candidate ranking
    sp = make_splits(tables, "starec", seed=seed)
    data = build_train_data(sp, tables, 50)
    test = eval_set(sp.test, 50)
    for ours_name, ref_name in (("bpr", "BPR"), ("pop", "MostPop")):
        t0 = time.monotonic()
        m, ts = _fit_cornac(ref_name, data.user_ids, data.item_ids, np.ones(len(data.user_ids)),
                            EPOCHS["starec"], seed)
        smat = _cornac_matrix(m, ts, data.n_users, data.n_items)
        ref = ranking_report(smat[test.user_ids[:, None], test.candidates], test.pos_index, draws=test.draws)
        ref_s = time.monotonic() - t0
        t0 = time.monotonic()
        ours = train_baseline(ours_name, sp, tables, dict(dim=DIM, epochs=EPOCHS["starec"], seed=seed))
        ours_s = time.monotonic() - t0
        for metric in ("ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20"):
            rows.append(dict(protocol="starec", model=ours_name, reference=f"cornac.{ref_name}", metric=metric,
                             ours=ours[metric], ref=ref[metric], ours_s=ours_s, ref_s=ref_s))
    for r in rows:
        r["diff"] = r["ours"] - r["ref"]
        r["ok"] = bool(r["diff"] >= -0.01)  # within 0.01 AUC or 1 NDCG point, or better
    return rows


def run_all_baselines(data_dir: str | Path, seed: int = 0, names=None) -> list[dict]:
    """Test metrics of every baseline on ML-100K collm (pointwise) and starec (ranking, plus *_full variants)."""
    import torch

    torch.set_num_threads(1)
    tables = load_tables("ml-100k", data_dir)
    out = []
    for proto in ("collm", "starec"):
        sp = make_splits(tables, proto, seed=seed)
        todo = list(names or BASELINES)
        if proto == "starec" and names is None:
            todo += ["bpr_full", "gru4rec_full", "sasrec_full"]
        for name in todo:
            t0 = time.monotonic()
            m = train_baseline(name, sp, tables, dict(seed=seed))
            m.update(protocol=proto, seconds=round(time.monotonic() - t0, 1))
            out.append(m)
            print(json.dumps(m), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("REASONREC_DATA_DIR"),
                    help="folder holding ml-100k/ (or the ml-100k folder itself); default $REASONREC_DATA_DIR")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all", action="store_true", help="also train every baseline on collm and starec")
    ap.add_argument("--skip-parity", action="store_true")
    args = ap.parse_args()
    if not args.skip_parity:
        rows = run_parity(args.data_dir, args.seed)
        print(f"{'protocol':8} {'model':5} {'reference':15} {'metric':8} {'ours':>8} {'cornac':>8} {'diff':>8}  "
              f"{'ours s':>7} {'ref s':>7}  parity")
        for r in rows:
            print(f"{r['protocol']:8} {r['model']:5} {r['reference']:15} {r['metric']:8} {r['ours']:8.4f} "
                  f"{r['ref']:8.4f} {r['diff']:+8.4f}  {r['ours_s']:7.1f} {r['ref_s']:7.1f}  "
                  f"{'ok' if r['ok'] else 'BELOW'}")
    if args.all:
        run_all_baselines(args.data_dir, args.seed)


if __name__ == "__main__":
    main()
