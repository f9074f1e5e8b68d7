"""Metrics against scikit-learn and against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    label_ranking_average_precision_score,
    log_loss,
    ndcg_score,
    roc_auc_score,
)

from reasonrec.errors import DataError
from reasonrec.eval import metrics as M


@pytest.fixture
def pointwise():
    rng = np.random.default_rng(0)
    n = 600
    users = rng.integers(0, 40, n)
    labels = rng.integers(0, 2, n)
    # Scores correlated with labels, rounded so that ties occur.
    probs = np.clip(np.round(0.5 + 0.2 * (labels - 0.5) + rng.normal(0, 0.2, n), 2), 0.01, 0.99)
    return users, labels, probs


def test_auc_logloss_accuracy_match_sklearn(pointwise):
    users, labels, probs = pointwise
    assert M.auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs))
    assert M.logloss(labels, probs) == pytest.approx(log_loss(labels, probs))
    assert M.accuracy(labels, probs) == pytest.approx(accuracy_score(labels, probs >= 0.5))


def test_auc_single_class_is_nan_and_bad_labels_raise():
    assert math.isnan(M.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(DataError, match="0/1"):
        M.auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="entries"):
        M.auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="NaN"):
        M.auc([0, 1], [0.1, float("nan")])


def test_logloss_clips_confident_misses():
    assert math.isfinite(M.logloss([1, 0], [0.0, 1.0]))
    assert M.logloss([1, 0], [0.8, 0.3]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)


def test_uauc_matches_per_user_sklearn_loop(pointwise):
    users, labels, probs = pointwise
    per_user = []
    for u in np.unique(users):
        m = users == u
        if len(set(labels[m])) == 2:
            per_user.append(roc_auc_score(labels[m], probs[m]))
    assert M.uauc(users, labels, probs) == pytest.approx(np.mean(per_user))


def test_uauc_skips_single_class_users_by_hand():
    # user 1: perfect (AUC 1); user 2: reversed (AUC 0); user 3: only positives (skipped); user 4: one tie → 0.5
    users = [1, 1, 2, 2, 3, 3, 4, 4]
    labels = [1, 0, 1, 0, 1, 1, 1, 0]
    scores = [0.9, 0.1, 0.1, 0.9, 0.5, 0.6, 0.4, 0.4]
    assert M.uauc(users, labels, scores) == pytest.approx((1 + 0 + 0.5) / 3)
    assert math.isnan(M.uauc([1, 1], [1, 1], [0.1, 0.2]))


def test_user_ndcg_matches_sklearn_including_ties(pointwise):
    users, labels, probs = pointwise
    for k in (1, 3, 5, 100):
        expected = []
        for u in np.unique(users):
            m = users == u
            if m.sum() < 2:
                continue
            expected.append(ndcg_score(labels[m][None, :], probs[m][None, :], k=k))
        assert M.user_ndcg_at_k(users, labels, probs, k) == pytest.approx(np.mean(expected)), k


def test_user_ndcg_map_hr_mrr_by_hand():
    # user 7: labels ranked by score = [0, 1, 1, 0]; user 8: single row (dropped); user 9: no positive (counts 0)
    users = [7, 7, 7, 7, 8, 9, 9]
    labels = [1, 0, 1, 0, 1, 0, 0]
    scores = [0.8, 0.9, 0.7, 0.1, 0.5, 0.3, 0.2]
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert M.user_ndcg_at_k(users, labels, scores, 5) == pytest.approx((dcg / idcg + 0) / 2)
    # AP@2 for user 7: hit at rank 2 → precision 1/2, divided by 2 positives (ThinkRec divides by all positives)
    assert M.user_map_at_k(users, labels, scores, 2) == pytest.approx((0.25 + 0) / 2)
    # AP@5: hits at ranks 2 and 3 → (1/2 + 2/3) / 2
    assert M.user_map_at_k(users, labels, scores, 5) == pytest.approx(((0.5 + 2 / 3) / 2) / 2)
    assert M.user_hr_at_k(users, labels, scores, 1) == pytest.approx(0.0)
    assert M.user_hr_at_k(users, labels, scores, 2) == pytest.approx(0.5)
    assert M.user_mrr(users, labels, scores) == pytest.approx((0.5 + 0) / 2)


def test_user_map_and_hr_break_ties_pessimistically():
    users = [1, 1, 1]
    labels = [1, 0, 0]
    scores = [0.5, 0.5, 0.5]
    assert M.user_hr_at_k(users, labels, scores, 2) == 0.0
    assert M.user_map_at_k(users, labels, scores, 3) == pytest.approx(1 / 3)
    # NDCG averages gains inside the tie: expected value over a random tie-break
    expected = np.mean([1.0, 1 / math.log2(3), 1 / math.log2(4)])
    assert M.user_ndcg_at_k(users, labels, scores, 3) == pytest.approx(expected)


def test_candidate_metrics_by_hand_and_k_beyond_list_length():
    scores = np.array([[0.9, 0.1, 0.5],   # positive index 2 → rank 1
                       [0.2, 0.3, 0.1]])  # positive index 0 → rank 1
    pos = np.array([2, 0])
    assert M.ndcg_at_k(scores, pos, 1) == 0.0
    assert M.ndcg_at_k(scores, pos, 2) == pytest.approx(1 / math.log2(3))
    assert M.ndcg_at_k(scores, pos, 50) == pytest.approx(1 / math.log2(3))
    assert M.hr_at_k(scores, pos, 2) == 1.0
    assert M.map_at_k(scores, pos, 5) == pytest.approx(0.5)
    assert M.mrr(scores, pos) == pytest.approx(0.5)


def test_candidate_ties_give_chance_level():
    c = 20
    scores = np.zeros((5, c))
    pos = np.arange(5)
    assert M.hr_at_k(scores, pos, 1) == pytest.approx(1 / c)
    assert M.hr_at_k(scores, pos, 10) == pytest.approx(10 / c)
    assert M.mrr(scores, pos) == pytest.approx(np.mean(1 / np.arange(1, c + 1)))
    assert M.ndcg_at_k(scores, pos, c) == pytest.approx(np.mean(1 / np.log2(np.arange(2, c + 2))))


def test_candidate_ndcg_matches_sklearn_without_ties():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(50, 20))
    pos = rng.integers(0, 20, 50)
    rel = np.zeros_like(scores)
    rel[np.arange(50), pos] = 1
    for k in (1, 5, 10, 20):
        assert M.ndcg_at_k(scores, pos, k) == pytest.approx(ndcg_score(rel, scores, k=k))


def test_draws_average_per_draw_means():
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    pos = np.array([0, 0, 0])  # hit, miss, miss
    draws = np.array([0, 1, 1])
    assert M.hr_at_k(scores, pos, 1) == pytest.approx(1 / 3)
    assert M.hr_at_k(scores, pos, 1, draws=draws) == pytest.approx((1.0 + 0.0) / 2)


def test_reports_have_the_documented_keys(pointwise):
    users, labels, probs = pointwise
    rep = M.pointwise_report(users, labels, probs)
    assert set(rep) == {"auc", "uauc", "logloss", "acc", "ndcg@5", "map@5"}
    rng = np.random.default_rng(2)
    rr = M.ranking_report(rng.normal(size=(30, 20)), rng.integers(0, 20, 30))
    assert set(rr) == {f"{m}@{k}" for m in ("ndcg", "hr") for k in (1, 5, 10, 20)} | {"mrr"}
    assert rr["ndcg@1"] == rr["hr@1"] and rr["ndcg@1"] <= rr["ndcg@5"] <= rr["ndcg@20"] <= 1.0
    with pytest.raises(DataError, match="pos_index"):
        M.ranking_report(np.zeros((2, 3)), np.array([0, 3]))


def test_user_map_without_cutoff_matches_sklearn_average_precision():
    # Without ties and with k ≥ list length, ThinkRec's AP@k (divided by all positives) is the ordinary AP.
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(30), 8)
    labels = rng.integers(0, 2, len(users))
    labels[::8] = 1  # every user has a positive
    scores = rng.permutation(len(users)).astype(float)  # distinct → no ties
    expected = [average_precision_score(labels[users == u], scores[users == u]) for u in range(30)]
    assert M.user_map_at_k(users, labels, scores, 8) == pytest.approx(np.mean(expected))
    assert M.user_map_at_k(users, labels, scores, 3) < M.user_map_at_k(users, labels, scores, 8)


def test_user_hr_and_mrr_against_a_direct_loop():
    rng = np.random.default_rng(4)
    users = rng.integers(0, 25, 300)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300)
    hr3, rr = [], []
    for u in np.unique(users):
        m = users == u
        if m.sum() < 2:
            continue
        ranked = labels[m][np.argsort(-scores[m])]
        hr3.append(float(ranked[:3].any()))
        rr.append(1 / (np.argmax(ranked) + 1) if ranked.any() else 0.0)
    assert M.user_hr_at_k(users, labels, scores, 3) == pytest.approx(np.mean(hr3))
    assert M.user_mrr(users, labels, scores) == pytest.approx(np.mean(rr))


def test_candidate_mrr_matches_sklearn_lrap_and_hr_matches_a_loop():
    # STARec shape: 1 positive + 19 negatives per list
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(200, 20))
    pos = rng.integers(0, 20, 200)
    rel = np.zeros_like(scores, dtype=int)
    rel[np.arange(200), pos] = 1
    # with one relevant item, label-ranking AP is 1/rank, i.e. the reciprocal rank
    assert M.mrr(scores, pos) == pytest.approx(label_ranking_average_precision_score(rel, scores))
    rank = (scores > scores[np.arange(200), pos][:, None]).sum(1)
    for k in (1, 5, 10, 20):
        assert M.hr_at_k(scores, pos, k) == pytest.approx(np.mean(rank < k))
        assert M.map_at_k(scores, pos, k) == pytest.approx(np.mean(np.where(rank < k, 1 / (rank + 1), 0)))
    assert M.hr_at_k(scores, pos, 20) == 1.0 and M.ndcg_at_k(scores, pos, 20) == pytest.approx(M.ndcg_at_k(
        scores, pos, 50))


def test_candidate_metrics_average_over_negative_draws_as_starec():
    # the same 40 test positives, each ranked against 3 independent draws of 19 negatives
    rng = np.random.default_rng(6)
    n, d = 40, 3
    scores = rng.normal(size=(n * d, 20))
    pos = np.zeros(n * d, dtype=int)
    scores[:, 0] += 1.0  # a model that prefers the positive
    draws = np.repeat(np.arange(d), n)
    per_draw = [M.ndcg_at_k(scores[draws == j], pos[draws == j], 10) for j in range(d)]
    assert M.ndcg_at_k(scores, pos, 10, draws=draws) == pytest.approx(np.mean(per_draw))
    rep = M.ranking_report(scores, pos, draws=draws)
    assert rep["ndcg@10"] == pytest.approx(np.mean(per_draw))
    assert rep["hr@10"] > 0.5 + 0.1  # better than the 10/20 chance level
