"""Parity of reasonrec's CTR backbones (and, via ``parity_baselines.py``, MF/BPR) with maintained PyPI packages.

Usage::

    python benchmarks/parity.py --data-dir DIR                    # DIN, DeepFM, DCN, AutoInt vs DeepCTR-Torch
    python benchmarks/parity.py --data-dir DIR --baselines        # + MF/BPR/Pop vs cornac (parity_baselines.py)
    python benchmarks/parity.py --ml1m-dir DIR                    # + published ML-1M tables (needs ratings.dat)

``DIR`` holds the ML-100K files (``u.data`` ...). Reference: DeepCTR-Torch (``pip install --no-deps deepctr-torch``;
torch-rechub 0.9 has no AutoInt with sequence features, DeepCTR-Torch has all four). Both sides get the identical
ML-100K ``collm`` split and the identical encoded inputs (``FeatureBuilder`` with ``hist_ratings=False``, since
DeepCTR-Torch has no per-position side feature): target item id, the item's genres (mean-pooled), gender,
age, occupation and the 10 most recent history items (mean-pooled for DeepFM/DCN/AutoInt, target attention for
DIN), embedding size 32, final MLP 200-80, Adam lr 1e-3, batch 1024, no L2, embedding init N(0, 1e-4), at most 20
epochs with early stopping on validation AUC (patience 2, best weights restored) — the same loop for both sides.
No user-id field on either side, as ``run_ctr``'s default on ``collm`` (``USER_FIELDS``; 86% of the test samples
come from users with no training row); the demographic fields, which ``run_ctr`` also drops there, are kept on
both sides, so that the check still covers three user fields. DIN on both sides: softmax-normalised attention weights and ReLU in the
attention unit and the final MLP (our defaults since issue 15; DeepCTR-Torch's ``att_weight_normalization=True``,
``att_activation="relu"``).

Known structural differences (each library's own model definition, not ours to change):

* DIN: DeepCTR-Torch's query/keys are item ids only (a multi-valued genre field cannot be a query there); ours
  attends with [item ; mean genre].
* DeepFM / DCN / AutoInt: DeepCTR-Torch adds a first-order term of per-value scalar weights (ours: a linear
  layer over the field embeddings in DeepFM, none in DCN/AutoInt); its DNN weights start at N(0, 1e-4).
* AutoInt: 3 interacting layers, 2 heads, per-field output 32 on both sides (our ``autoint_head_dim=16``).
  DeepCTR-Torch's AutoInt counts fields by embedding tables, so its history field gets its own item table
  (ours shares the item table).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reasonrec.data import load_tables, make_splits  # noqa: E402
from reasonrec.eval.metrics import auc as auc_score  # noqa: E402
from reasonrec.eval.metrics import pointwise_report  # noqa: E402
from reasonrec.rec.ctr import CTRModelConfig, build_ctr_model  # noqa: E402
from reasonrec.rec.features import FeatureBuilder  # noqa: E402
from reasonrec.rec.trainer import CTRTrainConfig, train_ctr  # noqa: E402

MODELS = ("din", "deepfm", "dcn", "autoint")
D, MLP, LR, BATCH, EPOCHS, PATIENCE = 32, (200, 80), 1e-3, 1024, 20, 2
OUR_CFG = CTRModelConfig(embedding_dim=D, mlp_hidden=MLP, autoint_head_dim=D // 2, autoint_heads=2,
                         cross_layers=3, init_std=1e-4, user_id_field=False, attention_softmax=True,
                         seq_activation="relu")
# ThinkRec Tab. 2 (MF, SASRec), TrackRec Tab. 2 MovieLens (DIN, DeepFM, AutoInt, DCN): collm AUC;
# STARec Tab. 4: starec NDCG@10 (points).
PUBLISHED = {
    ("collm", "mf"): 0.6401, ("collm", "sasrec"): 0.6956, ("collm", "din"): 0.7621, ("collm", "deepfm"): 0.7556,
    ("collm", "autoint"): 0.7553, ("collm", "dcn"): 0.7563,
    ("starec", "pop"): 49.08, ("starec", "bpr_full"): 60.85, ("starec", "gru4rec_full"): 75.47,
    ("starec", "sasrec_full"): 76.51,
}


# ------------------------------------------------------------------------------------------------- shared data


def collm_inputs(data_dir, seed: int = 0, hist_ratings: bool = False):
    """(builder, {split: EncodedSamples}) of ML-100K collm — the one input both sides read."""
    tables = load_tables("ml-100k", data_dir)
    sp = make_splits(tables, "collm", seed=seed)
    n_users = int(max(tables.users["user_id"].max(), tables.interactions["user_id"].max()))
    builder = FeatureBuilder(tables.items, tables.users, history_len=10, hist_ratings=hist_ratings, n_users=n_users)
    enc = {k: builder.encode(getattr(sp, k), where=k) for k in ("train", "valid", "test")}
    return builder, enc


def deepctr_arrays(enc, fmap) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Our encoded split as DeepCTR-Torch's input dict (the very same ids) and labels."""
    import torch

    b = enc.batch(torch.arange(len(enc)))
    x = {"item_id": b["item_id"].numpy(), "cats": b["item_cats"].numpy(),
         "hist_item_id": b["hist_item_ids"].numpy(), "hist_len": b["hist_mask"].sum(1).numpy()}
    for i, name in enumerate(fmap.user_fields):
        x[name] = b["user_feats"][:, i].numpy()
    return x, b["label"].numpy().astype(np.float32)


def deepctr_model(name: str, fmap, seed: int):
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DCN, DIN, AutoInt, DeepFM

    sparse = [SparseFeat("item_id", fmap.n_items + 1, D)]  # no user id, as OUR_CFG
    sparse += [SparseFeat(n, v, D) for n, v in fmap.user_fields.items()]
    cats = VarLenSparseFeat(SparseFeat("cats", fmap.n_categories, D), maxlen=fmap.max_categories, combiner="mean")
    # AutoInt sizes its output layer by the number of embedding *tables*, so a history sharing the item table
    # breaks it: there the history gets its own table.
    shared = "hist_item_id" if name == "autoint" else "item_id"
    hist = VarLenSparseFeat(SparseFeat("hist_item_id", fmap.n_items + 1, D, embedding_name=shared),
                            maxlen=fmap.history_len, combiner="mean",
                            length_name="hist_len" if name == "din" else None)
    cols = sparse + [cats, hist]
    common = dict(init_std=1e-4, seed=seed, device="cpu")
    if name == "din":
        return DIN(cols, ["item_id"], dnn_hidden_units=MLP, att_hidden_size=(80, 40), att_activation="relu",
                   att_weight_normalization=True, l2_reg_embedding=0.0, **common)
    if name == "deepfm":
        return DeepFM(cols, cols, dnn_hidden_units=MLP, l2_reg_linear=0.0, l2_reg_embedding=0.0, **common)
    if name == "dcn":
        return DCN(cols, cols, cross_num=3, cross_parameterization="vector", dnn_hidden_units=MLP,
                   l2_reg_linear=0.0, l2_reg_embedding=0.0, l2_reg_cross=0.0, **common)
    if name == "autoint":
        return AutoInt(cols, cols, att_layer_num=3, att_head_num=2, att_res=True, dnn_hidden_units=(),
                       l2_reg_embedding=0.0, **common)
    raise ValueError(name)


def train_deepctr(name: str, builder, enc, seed: int = 0, epochs: int = EPOCHS) -> dict:
    """DeepCTR-Torch's own ``fit`` (one epoch per call) with our early-stopping rule on validation AUC."""
    import torch

    torch.manual_seed(seed)
    model = deepctr_model(name, builder.feature_map, seed)
    model.compile(torch.optim.Adam(model.parameters(), lr=LR), "binary_crossentropy", metrics=[])
    (xt, yt), (xv, yv), (xs, ys) = (deepctr_arrays(enc[k], builder.feature_map) for k in ("train", "valid", "test"))
    best, best_state, best_epoch, bad, train_s, seen = -1.0, None, 0, 0, 0.0, 0
    epoch = 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and sample counts every call
            model.fit(dict(xt), yt, batch_size=BATCH, epochs=1, verbose=0, shuffle=True)
        train_s += time.perf_counter() - t0
        seen += len(yt)
        v = auc_score(yv, model.predict(dict(xv), batch_size=8192).ravel())
        if v > best:
            best, best_state, best_epoch, bad = v, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= PATIENCE:
                break
    model.load_state_dict(best_state)
    res = pointwise_report(enc["test"].user_ids, ys, model.predict(dict(xs), batch_size=8192).ravel())
    res.update({"valid/auc": best, "best_epoch": best_epoch, "epochs": epoch, "train_samples_per_s": seen / train_s})
    return res


def train_ours(name: str, builder, enc, seed: int = 0, epochs: int = EPOCHS) -> dict:
    import torch

    torch.manual_seed(seed)
    model = build_ctr_model(name, builder.feature_map, OUR_CFG)
    cfg = CTRTrainConfig(lr=LR, batch_size=BATCH, epochs=epochs, patience=PATIENCE, seed=seed, progress=False)
    return train_ctr(model, enc["train"], enc["valid"], cfg, test=enc["test"])


def run_ctr_parity(data_dir, seed: int = 0, models=MODELS, epochs: int = EPOCHS) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    builder, enc = collm_inputs(data_dir, seed)
    rows = []
    for name in models:
        t0 = time.monotonic()
        ours = train_ours(name, builder, enc, seed, epochs)
        ours_s = time.monotonic() - t0
        t0 = time.monotonic()
        ref = train_deepctr(name, builder, enc, seed, epochs)
        ref_s = time.monotonic() - t0
        for metric in ("auc", "uauc", "logloss"):
            rows.append(dict(protocol="collm", model=name, reference="deepctr_torch", metric=metric,
                             ours=ours[metric], ref=ref[metric], ours_s=ours_s, ref_s=ref_s,
                             ours_epochs=ours["best_epoch"], ref_epochs=ref["best_epoch"]))
        print(f"  [{name}] ours auc {ours['auc']:.4f} (best epoch {ours['best_epoch']}, {ours_s:.0f}s)  "
              f"deepctr auc {ref['auc']:.4f} (best epoch {ref['best_epoch']}, {ref_s:.0f}s)", flush=True)
    for r in rows:
        r["diff"] = r["ours"] - r["ref"]
        # the parity target is on AUC (within 0.01 or better); UAUC and LogLoss are printed for information
        r["ok"] = bool(r["diff"] >= -0.01) if r["metric"] == "auc" else None
    return rows


# ------------------------------------------------------------------------------------ published ML-1M numbers


def published_check(ml1m_dir, seed: int = 0) -> list[dict] | str:
    """Our ML-1M numbers next to the published tables, or the reason the check is skipped."""
    ratings = Path(ml1m_dir) / "ratings.dat" if ml1m_dir else None
    if ratings is None or not ratings.exists():
        return (f"skipped: MovieLens-1M ratings.dat is not at {ratings} (the shared copy lacks it, see "
                f"shared/data/README.md); pass --ml1m-dir to a complete ml-1m folder")
    from reasonrec.rec.baselines import train_baseline
    from reasonrec.rec.pipeline import run_ctr

    tables = load_tables("ml-1m", ml1m_dir)
    rows = []
    for proto in ("collm", "starec"):
        sp = make_splits(tables, proto, seed=seed)
        for (p, name), pub in PUBLISHED.items():
            if p != proto:
                continue
            t0 = time.monotonic()
            if name in MODELS:
                m = run_ctr(name, sp, tables, CTRModelConfig(), CTRTrainConfig(seed=seed, progress=False),
                            history_len=10)
            else:
                m = train_baseline(name, sp, tables, {"seed": seed})
            ours = m["auc"] if proto == "collm" else 100 * m["ndcg@10"]
            tol = 0.015 if proto == "collm" else 2.0
            rows.append(dict(protocol=proto, model=name, metric="auc" if proto == "collm" else "ndcg@10",
                             ours=ours, published=pub, diff=ours - pub, ok=bool(abs(ours - pub) <= tol),
                             seconds=time.monotonic() - t0))
            print(f"  [ml-1m {proto} {name}] {ours:.4f} vs published {pub}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------------ main


def _baseline_rows(data_dir, seed: int) -> list[dict] | str:
    """MF/BPR/Pop vs cornac from the baselines' own parity script (``benchmarks/parity_baselines.py``)."""
    try:
        from parity_baselines import run_parity
    except ImportError as err:
        return f"skipped: benchmarks/parity_baselines.py has no run_parity ({err})"
    try:
        return run_parity(data_dir, seed)
    except ImportError as err:  # cornac not installed
        return f"skipped: the cornac reference is not importable ({err}); pip install --no-deps cornac powerlaw"


def _table(rows: list[dict], ref_name: str) -> None:
    print(f"{'protocol':8} {'model':8} {'reference':22} {'metric':8} {'ours':>8} {ref_name:>8} {'diff':>8}  "
          f"{'ours s':>7} {'ref s':>7}  parity")
    for r in rows:
        print(f"{r['protocol']:8} {r['model']:8} {r['reference']:22} {r['metric']:8} {r['ours']:8.4f} "
              f"{r['ref']:8.4f} {r['diff']:+8.4f}  {r['ours_s']:7.1f} {r['ref_s']:7.1f}  "
              f"{'' if r['ok'] is None else 'ok' if r['ok'] else 'BELOW'}")


def main() -> None:
    default = os.environ.get("REASONREC_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                                       "ml-100k"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=default, help="ML-100K folder (u.data ...)")
    ap.add_argument("--ml1m-dir", default=str(Path(default).parent / "ml-1m"),
                    help="complete ML-1M folder for the published-table check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--baselines", action="store_true", help="also run MF/BPR/Pop vs cornac (parity_baselines.py)")
    ap.add_argument("--skip-ctr", action="store_true")
    args = ap.parse_args()

    if not args.skip_ctr:
        print(f"== CTR parity on ML-100K collm (seed {args.seed}; D={D}, MLP={MLP}, Adam {LR}, batch {BATCH}, "
              f"<= {args.epochs} epochs, patience {PATIENCE})", flush=True)
        rows = run_ctr_parity(args.data_dir, args.seed, tuple(args.models.split(",")), args.epochs)
        _table(rows, "ref")
    print("\n== MF/BPR/Pop parity (benchmarks/parity_baselines.py, reference cornac)", flush=True)
    if args.baselines:
        base = _baseline_rows(args.data_dir, args.seed)
        if isinstance(base, str):
            print(base)
        else:
            _table(base, "cornac")
    else:
        print("not run (pass --baselines; hook: parity_baselines.run_parity)")
    print("\n== Published ML-1M tables (ThinkRec Tab. 2, TrackRec Tab. 2, STARec Tab. 4)", flush=True)
    pub = published_check(args.ml1m_dir, args.seed)
    if isinstance(pub, str):
        print(pub)
    else:
        print(f"{'protocol':8} {'model':13} {'metric':8} {'ours':>8} {'published':>9} {'diff':>8}  within tol")
        for r in pub:
            print(f"{r['protocol']:8} {r['model']:13} {r['metric']:8} {r['ours']:8.4f} {r['published']:9.4f} "
                  f"{r['diff']:+8.4f}  {'ok' if r['ok'] else 'NO'}")


if __name__ == "__main__":
    main()
