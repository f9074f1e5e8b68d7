"""Confidence intervals for recommendation metrics: a paired bootstrap over users, with seeds as a second
source of variance.

Why users, not samples. The samples of one user share that user's taste, history and (for CTR) the model's
user embedding, so they are not independent draws: a user with 40 test rows is closer to one observation
than to 40. Resampling single rows treats them as independent and gives intervals that are too narrow (the
more rows per user, the worse). Each bootstrap replicate therefore draws *users* with replacement and keeps
every sample of a drawn user; a user drawn twice appears twice as two distinct users, so per-user metrics
(UAUC, NDCG@K, ...) count it twice. This is the cluster bootstrap (Davison & Hinkley 1997, §3.8).

Why paired. Variants of a study are scored on the same test samples, so their errors are correlated: a user
that every variant gets wrong lowers all of them. Applying *the same* user draw to the reference and to the
variant and taking the difference per replicate gives the distribution of Δ = variant − reference, whose
interval is much narrower than the two marginal intervals suggest. Δ of a variant against itself is exactly 0
in every replicate.

Seeds. A variant is usually trained with several seeds. The point estimate is the mean over seeds of the metric
on the full test set; a replicate applies its user draw to every seed's scores and averages the metric over
seeds (the bootstrap of the seed-mean), so the interval reflects the test-set sampling of the seed-mean with
the trained models held fixed. The spread of training itself is reported next to it as the standard deviation
of the per-seed values (``seed_sd``); with 3 seeds it is too rough to resample.

Intervals are percentile intervals of the replicates; the paired p-value is the two-sided bootstrap p-value
``2 · min(P*(Δ ≤ 0), P*(Δ ≥ 0))`` with the +1 correction of Davison & Hinkley (eq. 4.11), so it is never 0 from
a finite number of replicates. Replicates in which a metric is undefined (e.g. AUC on a draw with a single
class) are left out of the quantiles; ``n_valid`` says how many remained.

Metrics are reasonrec's own (:mod:`reasonrec.eval.metrics`); :data:`METRICS` names the ones supported:
pointwise ``auc``, ``uauc``, ``logloss``, ``acc`` and per-user ranking ``ndcg@K``, ``map@K``, ``hr@K``, ``mrr``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError
from . import metrics as M

MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]

#: name → metric(user_ids, labels, scores); ranking metrics take their cut-off as ``name@K``.
METRICS: dict[str, MetricFn] = {
    "auc": lambda u, y, s: M.auc_ranks(y, s),  # == M.auc (tests/test_results.py), faster per replicate
    "uauc": M.uauc,
    "logloss": lambda u, y, s: M.logloss(y, s),
    "acc": lambda u, y, s: M.accuracy(y, s),
    "mrr": M.user_mrr,
}
_AT_K = {"ndcg": M.user_ndcg_at_k, "map": M.user_map_at_k, "hr": M.user_hr_at_k}


def metric_function(name: str) -> MetricFn:
    """The metric called ``name`` (``auc``, ``ndcg@10`` ...); a ConfigError listing the valid names otherwise."""
    if name in METRICS:
        return METRICS[name]
    base, _, k = name.partition("@")
    if base in _AT_K and k.isdigit() and int(k) > 0:
        fn, kk = _AT_K[base], int(k)
        return lambda u, y, s: fn(u, y, s, kk)
    valid = ", ".join([*METRICS, *(f"{b}@K" for b in _AT_K)])
    raise ConfigError(f"unknown metric '{name}'; choose from {valid} (K a positive integer, e.g. ndcg@5)")


def metric_n(name: str, user_ids: np.ndarray, labels: np.ndarray) -> int:
    """What the metric averages over: samples for ``auc``/``logloss``/``acc``, users with both classes for
    ``uauc``, users with at least two rows for the per-user ranking metrics (they drop single-row users)."""
    if name in ("auc", "logloss", "acc"):
        return int(len(labels))
    _, inverse, counts = np.unique(user_ids, return_inverse=True, return_counts=True)
    if name == "uauc":
        pos = np.bincount(inverse, weights=labels, minlength=len(counts))
        return int(((pos > 0) & (pos < counts)).sum())
    return int((counts >= 2).sum())


class UserBootstrap:
    """Replicates that draw users with replacement and keep all their samples.

    ``draw(b)`` gives the sample indices of replicate ``b`` and new user ids (one per drawn position, so a user
    drawn twice counts as two users). The draws depend only on ``(user_ids, n_boot, seed)``, so every variant,
    seed and metric evaluated with one instance sees the same replicates: that is what makes deltas paired.
    """

    def __init__(self, user_ids, n_boot: int = 1000, seed: int = 0):
        if n_boot < 1:
            raise ConfigError(f"bootstrap: n_boot must be >= 1; got {n_boot}")
        u = np.asarray(user_ids)
        if u.ndim != 1 or len(u) == 0:
            raise DataError(f"bootstrap: user_ids must be a non-empty 1-D array; got shape {u.shape}")
        self.n_samples = len(u)
        self.n_boot = n_boot
        # Group sample indices by user once: order[starts[j]:starts[j]+sizes[j]] are user j's samples.
        self._order = np.argsort(u, kind="stable")
        _, self._starts, self._sizes = np.unique(u[self._order], return_index=True, return_counts=True)
        self.n_users = len(self._sizes)
        self._draws = np.random.default_rng(seed).integers(0, self.n_users, size=(n_boot, self.n_users))

    def draw(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        users = self._draws[b]
        sizes, starts = self._sizes[users], self._starts[users]
        ends = np.cumsum(sizes)
        offset = np.arange(ends[-1]) - np.repeat(ends - sizes, sizes)  # position inside each drawn user
        idx = self._order[np.repeat(starts, sizes) + offset]
        return idx, np.repeat(np.arange(len(users)), sizes)


@dataclass(frozen=True)
class Estimate:
    """A metric's mean over seeds with its bootstrap interval.

    Fields:
        value: mean over seeds of the metric on all samples (``nan`` if undefined).
        ci_low, ci_high: percentile interval of the bootstrapped seed-mean (``nan`` if no replicate is defined).
        seed_sd: standard deviation (ddof 1) of the per-seed values; ``nan`` with one seed.
        per_seed: the per-seed values.
        n: what the metric averages over (:func:`metric_n`).
        n_valid: replicates in which the metric was defined.
    """

    value: float
    ci_low: float
    ci_high: float
    seed_sd: float
    per_seed: tuple[float, ...]
    n: int
    n_valid: int


@dataclass(frozen=True)
class Delta:
    """Paired difference variant − reference: mean over seeds, percentile interval, two-sided p-value."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    n_valid: int


def _as_seed_matrix(name: str, scores, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2 or s.shape[1] != n or s.shape[0] == 0:
        raise DataError(f"bootstrap: scores of '{name}' must have shape (seeds, {n}); got {np.shape(scores)}")
    return s


def _interval(reps: np.ndarray, confidence: float) -> tuple[float, float, int]:
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return float("nan"), float("nan"), 0
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ok, [alpha, 1 - alpha])
    return float(lo), float(hi), int(ok.size)


def evaluate_variants(metric: str, user_ids, labels, scores: Mapping[str, np.ndarray], reference: str | None = None,
                      n_boot: int = 1000, confidence: float = 0.95, seed: int = 0, min_users: int = 2
                      ) -> tuple[dict[str, Estimate], dict[str, Delta]]:
    """Every variant's :class:`Estimate` and, if ``reference`` is given, every other variant's paired
    :class:`Delta` against it — all from one set of user replicates.

    ``scores[variant]`` is ``(seeds, N)`` (or ``(N,)`` for one seed), aligned with ``user_ids`` and ``labels``:
    every variant must be scored on the same N samples. With fewer than ``min_users`` distinct users the
    intervals and p-values are ``nan``: the bootstrap cannot see between-user variance it has no users for
    (one user resampled is always the same user, which would give a zero-width interval and p ≈ 0).
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"bootstrap: confidence must lie in (0, 1); got {confidence}")
    fn = metric_function(metric)
    u = np.asarray(user_ids)
    y = np.asarray(labels)
    if len(u) != len(y):
        raise DataError(f"bootstrap: {len(u)} user ids but {len(y)} labels; pass aligned arrays")
    mats = {v: _as_seed_matrix(v, s, len(y)) for v, s in scores.items()}
    if reference is not None and reference not in mats:
        raise ConfigError(f"bootstrap: reference variant '{reference}' is not among the variants "
                          f"{sorted(mats)}; name one of them")
    boot = UserBootstrap(u, n_boot, seed)
    reps = {v: np.full(n_boot, np.nan) for v in mats}
    for b in range(n_boot if boot.n_users >= min_users else 0):
        idx, bu = boot.draw(b)
        yb = y[idx]
        for v, mat in mats.items():
            reps[v][b] = np.mean([fn(bu, yb, row[idx]) for row in mat])
    n = metric_n(metric, u, y)
    estimates = {}
    for v, mat in mats.items():
        per_seed = tuple(float(fn(u, y, row)) for row in mat)
        lo, hi, ok = _interval(reps[v], confidence)
        sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan")
        estimates[v] = Estimate(float(np.mean(per_seed)), lo, hi, sd, per_seed, n, ok)
    deltas = {}
    if reference is not None:
        for v in mats:
            if v == reference:
                continue
            d = reps[v] - reps[reference]
            lo, hi, ok = _interval(d, confidence)
            fin = d[np.isfinite(d)]
            p = (min(1.0, 2 * (min((fin <= 0).sum(), (fin >= 0).sum()) + 1) / (fin.size + 1))
                 if fin.size else float("nan"))
            deltas[v] = Delta(estimates[v].value - estimates[reference].value, lo, hi, float(p), ok)
    return estimates, deltas


def bootstrap_metric(metric: str, user_ids, labels, scores, n_boot: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> Estimate:
    """One variant's :class:`Estimate`; ``scores`` is ``(seeds, N)`` or ``(N,)``."""
    return evaluate_variants(metric, user_ids, labels, {"x": scores}, None, n_boot, confidence, seed)[0]["x"]


def paired_delta(metric: str, user_ids, labels, scores_ref, scores_new, n_boot: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> Delta:
    """``new − ref`` on the same samples with the same user replicates (see the module docstring)."""
    _, deltas = evaluate_variants(metric, user_ids, labels, {"ref": scores_ref, "new": scores_new}, "ref", n_boot,
                                  confidence, seed)
    return deltas["new"]
