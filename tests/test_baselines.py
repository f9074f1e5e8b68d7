"""Classic baselines on small synthetic data: shapes, a learnable signal is learned, determinism under a seed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from reasonrec.errors import ConfigError, DataError
from reasonrec.eval.metrics import auc
from reasonrec.rec.baselines import (
    BASELINES,
    BaselineRecommender,
    build_train_data,
    eval_set,
    pad_histories,
    train_baseline,
)
from reasonrec.rec.baselines.train import bpr_loss, gbce_loss, patience_epochs

N_USERS, N_ITEMS = 60, 40
FAST = dict(dim=16, epochs=8, patience=3, max_len=10, n_layers=1, lr=1e-2, batch_size=64, seed=0)


def _world(seed: int = 0):
    """Users of two tastes (even/odd): even users like items 1..20, odd users items 21..40. Each user's sequence
    walks through its own half in order, so both collaborative and sequential signals exist."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, N_USERS + 1):
        half = np.arange(1, 21) if u % 2 == 0 else np.arange(21, 41)
        start = rng.integers(0, 20)
        seq = np.roll(half, -start)[:15]
        for t, i in enumerate(seq):
            rows.append((u, int(i), 5.0, 1000 * u + t))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1)})
    return SimpleNamespace(interactions=inter, items=items, users=pd.DataFrame({"user_id": np.arange(1, N_USERS + 1)}))


def _pointwise_splits(tables, seed=0):
    """collm-like samples: positives from the user's half, negatives from the other half, history = previous ones."""
    rng = np.random.default_rng(seed)
    parts = {"train": [], "valid": [], "test": []}
    for u, g in tables.interactions.groupby("user_id"):
        seq = g["item_id"].to_numpy()
        other = np.arange(21, 41) if u % 2 == 0 else np.arange(1, 21)
        for t, i in enumerate(seq):
            split = "train" if t < 9 else ("valid" if t < 12 else "test")
            for item, label in ((i, 1), (int(rng.choice(other)), 0)):
                parts[split].append(dict(user_id=u, item_id=int(item), rating=5.0 if label else 1.0, label=label,
                                         timestamp=1000 * u + t, hist_item_ids=list(seq[max(0, t - 10):t]),
                                         hist_ratings=[5.0] * min(t, 10), hist_labels=[1] * min(t, 10)))
    dfs = {k: pd.DataFrame(v) for k, v in parts.items()}
    return SimpleNamespace(kind="pointwise", protocol="synthetic", **dfs)


def _ranking_splits(tables, seed=0):
    """starec-like samples: last item of each user ranked among 9 negatives from the other half; 2 draws."""
    rng = np.random.default_rng(seed)
    rows = {"train": [], "test": []}
    for u, g in tables.interactions.groupby("user_id"):
        seq = g["item_id"].to_numpy()
        other = np.arange(21, 41) if u % 2 == 0 else np.arange(1, 21)
        split = "train" if u <= N_USERS // 2 else "test"
        for draw in range(1 if split == "train" else 2):
            cands = rng.permutation(np.r_[seq[-1], rng.choice(other, 9, replace=False)])
            rows[split].append(dict(user_id=u, item_id=int(seq[-1]), timestamp=int(g["timestamp"].iloc[-1]),
                                    hist_item_ids=list(seq[:-1]), hist_ratings=[5.0] * 14, hist_labels=[1] * 14,
                                    candidate_ids=cands, draw=draw))
    return SimpleNamespace(kind="ranking", protocol="starec", train=pd.DataFrame(rows["train"]),
                           valid=pd.DataFrame(), test=pd.DataFrame(rows["test"]))


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    t = _world()
    return t, _pointwise_splits(t), _ranking_splits(t)


def test_pad_histories_keeps_the_most_recent_items_left_padded():
    h = pad_histories([[1, 2, 3, 4], [], [7]], 3)
    assert h.tolist() == [[2, 3, 4], [0, 0, 0], [0, 0, 7]]


def test_losses_by_hand():
    pos, neg = torch.tensor([2.0]), torch.tensor([[0.0]])
    assert bpr_loss(pos, neg).item() == pytest.approx(np.log1p(np.exp(-2.0)))
    # gBCE with t = 0 has β = 1 → plain BCE with negatives
    expected = np.log1p(np.exp(-2.0)) + np.log(2)
    assert gbce_loss(pos, neg, n_items=11, t=0.0).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", list(BASELINES))
def test_pointwise_shapes_signal_and_embeddings(world, name):
    tables, pw, _ = world
    metrics, rec = train_baseline(name, pw, tables, FAST, return_model=True)
    assert {"auc", "uauc", "logloss", "acc", "ndcg@5", "map@5"} <= set(metrics)
    # The negatives come from the other taste group: every personalised model must separate them. Each item is
    # liked by one group and disliked by the other, so Pop (one score per item) stays near chance here.
    assert metrics["auc"] > 0.75 if name != "pop" else 0.3 < metrics["auc"] < 0.7, metrics
    te = eval_set(pw.test, 10)
    p = rec.score(te.user_ids, te.item_ids, pw.test["hist_item_ids"].to_numpy())
    assert p.shape == (len(pw.test),) and np.all((p >= 0) & (p <= 1))
    ue, ie = rec.user_embeddings(), rec.item_embeddings()
    assert ue.shape[0] == N_USERS + 1 and ie.shape[0] == N_ITEMS + 1 and ue.shape[1] == ie.shape[1]


@pytest.mark.parametrize("name", [n for n in BASELINES if n != "pop"])
def test_ranking_protocol_learns_and_is_deterministic(world, name):
    tables, _, rk = world
    # 60 users give 60 training windows: small batches so sequence models take enough steps
    cfg = dict(FAST, epochs=6, batch_size=8 if name in ("sasrec", "gsasrec", "gru4rec") else 64)
    # With 40 items, 32 negatives per positive would mostly be the user's held-out own-taste items; keep 2.
    cfg["n_negatives"] = 2
    m1, rec = train_baseline(name, rk, tables, cfg, return_model=True)
    assert {"ndcg@1", "ndcg@5", "ndcg@10", "hr@1", "mrr", "auc", "uauc", "logloss", "acc"} <= set(m1)
    # Negatives come from the other taste: a chance ranker gets NDCG@10 ≈ 0.39 on 10 candidates.
    assert m1["ndcg@10"] > 0.6, m1
    assert m1["auc"] > 0.7, m1  # the candidate rows as pointwise samples: positive vs its negatives
    te = eval_set(rk.test, 10)
    s = rec.score_candidates(te.user_ids, rk.test["hist_item_ids"].to_numpy(), te.candidates)
    assert s.shape == te.candidates.shape
    m2 = train_baseline(name, rk, tables, cfg)
    assert {k: v for k, v in m1.items() if k != "fit_seconds"} == {k: v for k, v in m2.items() if k != "fit_seconds"}


@pytest.mark.parametrize("name", ["mf", "bpr", "lightgcn"])
def test_id_model_embeddings_separate_the_two_tastes(world, name):
    """ThinkRec groups users by their MF embeddings: same-taste users must be closer than cross-taste users."""
    tables, pw, _ = world
    _, rec = train_baseline(name, pw, tables, FAST, return_model=True)
    ue = rec.user_embeddings()[1:]
    ue = ue / np.linalg.norm(ue, axis=1, keepdims=True)
    sim = ue @ ue.T
    even = (np.arange(1, N_USERS + 1) % 2 == 0)
    same = sim[np.equal.outer(even, even) & ~np.eye(N_USERS, dtype=bool)].mean()
    cross = sim[~np.equal.outer(even, even)].mean()
    assert same > cross + 0.2, (same, cross)
    ie = rec.item_embeddings()
    # item embeddings as well: items 1..20 vs 21..40
    ie = ie[1:] / np.linalg.norm(ie[1:], axis=1, keepdims=True)
    first = np.arange(1, N_ITEMS + 1) <= 20
    assert (ie[first] @ ie[first].T).mean() > (ie[first] @ ie[~first].T).mean() + 0.2


@pytest.mark.parametrize("name", ["mf", "sasrec"])
def test_untrained_models_stay_near_chance(world, name):
    """The signal checks above are not met by initialisation alone."""
    tables, pw, _ = world
    m = train_baseline(name, pw, tables, dict(FAST, epochs=0))
    assert 0.3 < m["auc"] < 0.7, m


def test_pop_ranks_by_training_counts(world):
    tables, _, rk = world
    data = build_train_data(rk, tables, 10)
    rec = BaselineRecommender("pop").fit(data)
    counts = np.bincount(data.item_ids, minlength=N_ITEMS + 1)
    s = rec.score_candidates(np.array([1]), None, np.array([[counts.argmax(), counts.argmin()]]))
    assert s[0, 0] > s[0, 1]


def test_full_variant_uses_more_interactions_without_leaking_the_target(world):
    tables, _, rk = world
    part = build_train_data(rk, tables, 10)
    full = build_train_data(rk, tables, 10, full=True)
    assert len(full.user_ids) >= len(part.user_ids)
    # no test user's held-out positive appears in training for that user
    tgt = dict(zip(rk.test["user_id"], rk.test["item_id"], strict=False))
    for d in (part, full):
        leaked = [(u, i) for u, i in zip(d.user_ids, d.item_ids, strict=True) if tgt.get(u) == i]
        assert not leaked
    assert train_baseline("bpr_full", rk, tables, FAST)["ndcg@10"] > 0.6


def test_errors_name_the_fix(world):
    tables, pw, _ = world
    with pytest.raises(ConfigError, match="unknown"):
        train_baseline("mff", pw, tables)
    with pytest.raises(DataError, match="full"):
        build_train_data(pw, tables, 10, full=True)
    with pytest.raises(DataError, match="not fitted"):
        BaselineRecommender("mf").score([1], [1])
    assert auc([0, 1], [0.1, 0.9]) == 1.0


def test_patience_counts_optimizer_steps_on_small_data(world):
    """ML-100K starec gives a sequence model 7 steps per epoch; 5 epochs of patience stopped SASRec on its
    popularity plateau. Patience must also cover ``patience_steps`` optimizer steps."""
    assert patience_epochs(5, 300, 7) == 43 and patience_epochs(5, 300, 250) == 5
    tables, _, rk = world
    # 120 training windows (60 users × 2) in one batch: one step per epoch; the validation NDCG saturates early
    cfg = dict(FAST, epochs=25, patience=3, patience_steps=12, batch_size=128, n_negatives=2)
    m, rec = train_baseline("sasrec", rk, tables, cfg, return_model=True)
    ran = len(rec.history_)
    assert ran == 25 or ran - 1 - rec.best_epoch_ >= 12, (ran, rec.best_epoch_, rec.history_)
    # stopping after 3 epochs without gain left it on a plateau near 0.57 validation NDCG@10 (seed 0)
    assert m["ndcg@10"] > 0.6, (m, rec.history_)
