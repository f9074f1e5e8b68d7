"""Recommendation metrics on plain numpy arrays.

Three families, each a set of small functions plus one report helper:

* **Global pointwise** (CTR protocols ``collm``/``kar``/``tallrec``): :func:`auc` (scikit-learn's
  ``roc_auc_score``), :func:`logloss`, :func:`accuracy` (threshold 0.5 on probabilities) and :func:`uauc`, the mean
  per-user AUC over users that have both classes in the evaluated set (CoLLM / ThinkRec ``uAUC_me``).
* **Per-user ranking of a user's own test interactions** (ThinkRec Tab. 2, NDCG@5 / MAP@5): every user's test
  rows are sorted by score and the 0/1 labels are the relevances. Following ThinkRec's code
  (``minigpt4/tasks/rec_base_task.py``: ``reorganize_by_user``, ``ndcg_at_k``, ``map_at_k``, ``hr_at_k``):
  users with a single test row are dropped; a user without any positive counts as 0 (it stays in the mean);
  IDCG@k is the DCG of the ideally sorted labels truncated at k; AP@k divides the summed precisions at the hits
  within the top k by the user's *total* number of positives (not by min(k, positives)).
* **Candidate lists** (STARec protocol: one held-out positive + 19 sampled negatives per list, repeated over
  several negative draws): ``scores[N, C]`` and ``pos_index[N]``. Every list has exactly one relevant item, so
  NDCG@k = 1/log2(rank+2), HR@k = [rank < k], AP@k = [rank < k]/(rank+1), RR = 1/(rank+1) with a 0-based rank.
  With ``draws`` given, the metric is the mean over draws of the per-draw means (STARec averages its numbers over
  negative draws).

Ties. A constant scorer must not look better than chance, so:

* candidate lists: the positive's rank is uniform over its tie group, and every metric is the exact expectation
  over that uniform tie-break (a constant scorer gets the chance value, e.g. HR@1 = 1/C);
* per-user NDCG: gains are averaged inside tie groups, which is the same expectation and equals scikit-learn's
  ``ndcg_score`` (``ignore_ties=False``);
* per-user MAP@k and HR@k: DEVIATION from ThinkRec's ``np.argsort(-pred)`` (quicksort: order of tied items is
  arbitrary) — ties are broken pessimistically (negatives before positives inside a tie group) so the result is
  deterministic and never flatters a model that cannot separate the items.

Why our own code for the ranking metrics: scikit-learn has no MAP@k / HR@k / MRR with these conventions and its
``ndcg_score`` wants a dense [n_users, n_items] matrix; per-user lists here have different lengths. AUC and the
NDCG convention are checked against scikit-learn in ``tests/test_metrics.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from reasonrec.errors import DataError

_EPS = 1e-7


def _as_1d(name: str, x, n: int | None = None, dtype=None) -> np.ndarray:
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim == 2 and arr.shape[1] == 1:  # a column vector, e.g. model output of shape (N, 1)
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"metrics: `{name}` must be 1-D; got shape {np.shape(x)}")
    if n is not None and arr.shape[0] != n:
        raise DataError(f"metrics: `{name}` has {arr.shape[0]} entries but the labels have {n}; pass aligned arrays")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise DataError(f"metrics: `{name}` contains NaN or inf; check the model's outputs")
    return arr


def _binary_labels(labels) -> np.ndarray:
    y = _as_1d("labels", labels)
    if y.size and not ((y == 0) | (y == 1)).all():  # not np.isin: 10x slower, and this runs per replicate
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise DataError(f"metrics: `labels` must be 0/1; got values {bad.tolist()}")
    return y.astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Global pointwise metrics
# ---------------------------------------------------------------------------------------------------------------


def auc(labels, scores) -> float:
    """ROC AUC (scikit-learn ``roc_auc_score``); ``nan`` when only one class is present."""
    y = _binary_labels(labels)
    s = _as_1d("scores", scores, len(y), dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, s))


def auc_ranks(labels, scores) -> float:
    """The same AUC as :func:`auc`, by the Mann-Whitney rank sum (average ranks for ties): no input validation
    beyond :func:`auc`'s and ~20x faster on small arrays, for the bootstrap that calls it thousands of times."""
    y = _binary_labels(labels)
    s = _as_1d("scores", scores, len(y), dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    s_o = s[order]
    tie = np.r_[True, s_o[1:] != s_o[:-1]]
    first = np.flatnonzero(tie)
    last = np.r_[first[1:], len(s)] - 1
    rank = ((first + last) / 2 + 1)[np.cumsum(tie) - 1]  # 1-based average rank of each tie group
    return float((rank[y[order] == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _group_auc(user_ids: np.ndarray, y: np.ndarray, s: np.ndarray, frame: bool = True):
    """Per-user Mann-Whitney AUC with average ranks for ties, one row per user with both classes.

    AUC_u = (R⁺ − n⁺(n⁺+1)/2) / (n⁺ n⁻), R⁺ the sum of the positives' ranks inside the user — identical to
    ``roc_auc_score`` on that user's rows, but vectorised over all users at once. ``frame=False`` returns only
    the per-user AUC array (what :func:`uauc` needs, without building a DataFrame).
    """
    if len(s) == 0:
        return np.zeros(0) if not frame else pd.DataFrame({"n": [], "pos": [], "rp": [], "auc": []})
    users, inv = np.unique(user_ids, return_inverse=True)
    # numpy rather than a pandas groupby: the bootstrap evaluates this thousands of times
    order = np.lexsort((s, inv))  # by user, then score
    inv_o, s_o, y_o = inv[order], s[order], y[order].astype(np.float64)
    n = np.bincount(inv, minlength=len(users))
    rank = np.arange(len(s)) - np.repeat(np.cumsum(n) - n, n) + 1  # 1-based rank inside the user
    tie = np.r_[True, (inv_o[1:] != inv_o[:-1]) | (s_o[1:] != s_o[:-1])]
    first = np.flatnonzero(tie)
    last = np.r_[first[1:], len(s)] - 1
    avg = ((rank[first] + rank[last]) / 2)[np.cumsum(tie) - 1]  # average rank of each tie group
    pos = np.bincount(inv_o, weights=y_o, minlength=len(users))
    rp = np.bincount(inv_o, weights=avg * y_o, minlength=len(users))
    keep = (pos > 0) & (pos < n)
    n, pos, rp = n[keep], pos[keep], rp[keep]
    auc_u = (rp - pos * (pos + 1) / 2) / (pos * (n - pos))
    if not frame:
        return auc_u
    return pd.DataFrame({"n": n, "pos": pos, "rp": rp, "auc": auc_u}, index=pd.Index(users[keep], name="u"))


def uauc(user_ids, labels, scores) -> float:
    """Mean per-user AUC over users with both classes (CoLLM/ThinkRec ``uAUC_me``); ``nan`` if there are none."""
    y = _binary_labels(labels)
    s = _as_1d("scores", scores, len(y), dtype=np.float64)
    u = _as_1d("user_ids", user_ids, len(y))
    per_user = _group_auc(u, y, s, frame=False)
    return float(per_user.mean()) if len(per_user) else float("nan")


def logloss(labels, probs) -> float:
    """Mean binary cross-entropy of probabilities, clipped to [1e-7, 1-1e-7] so a confident miss stays finite."""
    y = _binary_labels(labels)
    p = np.clip(_as_1d("probs", probs, len(y), dtype=np.float64), _EPS, 1 - _EPS)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(labels, probs, threshold: float = 0.5) -> float:
    """Share of rows whose prediction ``probs >= threshold`` equals the label."""
    y = _binary_labels(labels)
    p = _as_1d("probs", probs, len(y), dtype=np.float64)
    if y.size == 0:
        return float("nan")
    return float(np.mean((p >= threshold).astype(np.int64) == y))


# ---------------------------------------------------------------------------------------------------------------
# Per-user ranking of a user's own test interactions (ThinkRec)
# ---------------------------------------------------------------------------------------------------------------


def _per_user_lists(user_ids, labels, scores, min_rows: int = 2):
    """Yield (labels, scores) per user with at least ``min_rows`` rows (ThinkRec drops single-row users)."""
    y = _binary_labels(labels)
    s = _as_1d("scores", scores, len(y), dtype=np.float64)
    u = _as_1d("user_ids", user_ids, len(y))
    order = np.argsort(u, kind="stable")
    u_sorted = u[order]
    bounds = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        if b - a >= min_rows:
            idx = order[a:b]
            yield y[idx], s[idx]


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2))


def _ndcg_list(y: np.ndarray, s: np.ndarray, k: int) -> float:
    """NDCG@k of one list with tie-averaged gains (== sklearn ``ndcg_score`` with ``ignore_ties=False``)."""
    n = len(y)
    kk = min(k, n)
    ideal = np.sort(y)[::-1][:kk].astype(np.float64)
    idcg = float(ideal @ _discounts(kk))
    if idcg == 0.0:
        return 0.0
    # Sort by score descending; inside each tie group every position gets the group's mean gain.
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    sizes = np.diff(np.r_[starts, n])
    mean_gain = np.repeat(np.add.reduceat(y_sorted, starts) / sizes, sizes)
    disc = np.zeros(n)
    disc[:kk] = _discounts(kk)
    return float(mean_gain @ disc) / idcg


def _pessimistic_order(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Labels sorted by score descending, negatives first inside a tie group."""
    order = np.lexsort((y, -s))  # last key is primary: score desc, then label asc
    return y[order]


def user_ndcg_at_k(user_ids, labels, scores, k: int) -> float:
    """Mean over users (≥2 rows) of NDCG@k of the user's own rows ranked by score; users without positives count 0."""
    vals = [_ndcg_list(y, s, k) for y, s in _per_user_lists(user_ids, labels, scores)]
    return float(np.mean(vals)) if vals else float("nan")


def user_map_at_k(user_ids, labels, scores, k: int) -> float:
    """Mean over users (≥2 rows) of AP@k = Σ_{hits i ≤ k} precision@i / (#positives of the user) (ThinkRec)."""
    vals = []
    for y, s in _per_user_lists(user_ids, labels, scores):
        ranked = _pessimistic_order(y, s)[:k]
        n_pos = int(y.sum())
        if n_pos == 0:
            vals.append(0.0)
            continue
        hits = np.cumsum(ranked)
        prec = hits / np.arange(1, len(ranked) + 1)
        vals.append(float((prec * ranked).sum()) / n_pos)
    return float(np.mean(vals)) if vals else float("nan")


def user_hr_at_k(user_ids, labels, scores, k: int) -> float:
    """Share of users (≥2 rows) with at least one positive among their top-k rows."""
    vals = [float(_pessimistic_order(y, s)[:k].any()) for y, s in _per_user_lists(user_ids, labels, scores)]
    return float(np.mean(vals)) if vals else float("nan")


def user_mrr(user_ids, labels, scores) -> float:
    """Mean over users (≥2 rows) of 1/(rank of the first positive); 0 for users without positives."""
    vals = []
    for y, s in _per_user_lists(user_ids, labels, scores):
        hits = np.flatnonzero(_pessimistic_order(y, s))
        vals.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Candidate lists: one positive among C candidates (STARec)
# ---------------------------------------------------------------------------------------------------------------


def _candidate_inputs(scores, pos_index) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise DataError(f"metrics: candidate `scores` must be 2-D [N lists, C candidates]; got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise DataError("metrics: candidate `scores` contain NaN or inf; check the model's outputs")
    p = np.asarray(pos_index).reshape(-1)
    if p.shape[0] != s.shape[0]:
        raise DataError(f"metrics: `pos_index` has {p.shape[0]} entries but `scores` has {s.shape[0]} lists")
    if p.size and (p.min() < 0 or p.max() >= s.shape[1]):
        raise DataError(f"metrics: `pos_index` must lie in [0, {s.shape[1] - 1}]; got {p.min()}..{p.max()}")
    return s, p.astype(np.int64)


def candidate_ranks(scores, pos_index) -> tuple[np.ndarray, np.ndarray]:
    """For each list: (number of candidates scored strictly above the positive, number tied with it, excluding it).

    Under a uniform tie-break the positive's 0-based rank is uniform on {greater, ..., greater + ties}.
    """
    s, p = _candidate_inputs(scores, pos_index)
    pos = s[np.arange(len(p)), p][:, None]
    greater = (s > pos).sum(axis=1)
    ties = (s == pos).sum(axis=1) - 1
    return greater, ties


def _expected_over_ties(scores, pos_index, f) -> np.ndarray:
    """E[f(rank)] per list with the rank uniform on its tie range; ``f`` maps 0-based ranks [N, T] to values."""
    greater, ties = candidate_ranks(scores, pos_index)
    if len(greater) == 0:
        return np.zeros(0)
    width = int(ties.max()) + 1
    offs = np.arange(width)[None, :]
    ranks = greater[:, None] + offs  # (N, width)
    valid = offs <= ties[:, None]
    vals = np.where(valid, f(ranks.astype(np.float64)), 0.0)
    return vals.sum(axis=1) / (ties + 1)


def _mean_over_draws(values: np.ndarray, draws) -> float:
    if values.size == 0:
        return float("nan")
    if draws is None:
        return float(values.mean())
    d = _as_1d("draws", draws, len(values))
    return float(pd.Series(values).groupby(d).mean().mean())


def ndcg_at_k(scores, pos_index, k: int, draws=None) -> float:
    """NDCG@k of one positive per candidate list: 1/log2(rank+2) if rank < k (expected over ties)."""
    v = _expected_over_ties(scores, pos_index, lambda r: np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0))
    return _mean_over_draws(v, draws)


def hr_at_k(scores, pos_index, k: int, draws=None) -> float:
    """HR@k (= Recall@k with one positive): share of lists whose positive ranks in the top k (expected over ties)."""
    v = _expected_over_ties(scores, pos_index, lambda r: (r < k).astype(np.float64))
    return _mean_over_draws(v, draws)


def map_at_k(scores, pos_index, k: int, draws=None) -> float:
    """MAP@k with one positive per list: AP@k = 1/(rank+1) if rank < k (expected over ties)."""
    v = _expected_over_ties(scores, pos_index, lambda r: np.where(r < k, 1.0 / (r + 1.0), 0.0))
    return _mean_over_draws(v, draws)


def mrr(scores, pos_index, draws=None) -> float:
    """Mean reciprocal rank 1/(rank+1) of the positive (expected over ties)."""
    v = _expected_over_ties(scores, pos_index, lambda r: 1.0 / (r + 1.0))
    return _mean_over_draws(v, draws)


# ---------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------


def pointwise_report(user_ids, labels, probs, k: int = 5) -> dict[str, float]:
    """AUC, UAUC, LogLoss, ACC on probabilities, plus ThinkRec's per-user NDCG@k and MAP@k (default k=5)."""
    return {
        "auc": auc(labels, probs),
        "uauc": uauc(user_ids, labels, probs),
        "logloss": logloss(labels, probs),
        "acc": accuracy(labels, probs),
        f"ndcg@{k}": user_ndcg_at_k(user_ids, labels, probs, k),
        f"map@{k}": user_map_at_k(user_ids, labels, probs, k),
    }


def ranking_report(scores, pos_index, ks: Sequence[int] = (1, 5, 10, 20), draws=None) -> dict[str, float]:
    """NDCG@k and HR@k for each k, and MRR, over candidate lists (STARec protocol), averaged over ``draws``."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = ndcg_at_k(scores, pos_index, k, draws)
    for k in ks:
        out[f"hr@{k}"] = hr_at_k(scores, pos_index, k, draws)
    out["mrr"] = mrr(scores, pos_index, draws)
    return out
