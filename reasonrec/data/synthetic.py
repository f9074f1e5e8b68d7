"""A small synthetic world with known truth, for unit tests that must know the right answer.

Each of ``n_factors`` latent dimensions is a genre. Items carry 1–3 genres (their latent vector is the genre
indicator plus noise) and a title; users have Gaussian tastes over the genres. The true affinity is
``score(u, i) = <p_u, q_i> + b_i`` (a matrix-factorisation world, Koren et al. 2009). Users see items with
probability ∝ exp(exposure · score) — so they mostly meet what they like, but dislikes occur — and rate
``round(3 + 1.2 · z(score) + noise · ε)`` clipped to 1–5, so ``rating > 3`` is a noisy view of a high score.
Timestamps are spread over ``days`` days from ``start``; everything is a function of ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .canonical import canonicalize
from .tables import Tables

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Documentary", "Animation", "Thriller",
          "Western", "Musical", "Mystery")
_ADJ = ("Silent", "Crimson", "Last", "Hidden", "Golden", "Broken", "Distant", "Electric", "Frozen", "Midnight",
        "Wild", "Secret", "Lost", "Burning", "Quiet", "Iron")
_NOUN = ("Harbor", "Empire", "Garden", "Signal", "River", "Machine", "Promise", "Winter", "Kingdom", "Echo",
         "Frontier", "Letter", "Storm", "Carnival", "Orbit", "Shadow")


@dataclass
class SyntheticTruth:
    """Ground truth of a synthetic world (row 0 of each factor matrix is the padding id)."""

    user_factors: np.ndarray  # (n_users + 1, k)
    item_factors: np.ndarray  # (n_items + 1, k)
    item_bias: np.ndarray     # (n_items + 1,)
    genres: tuple[str, ...]

    def true_score(self, user_ids, item_ids) -> np.ndarray:
        """score(u, i) = <p_u, q_i> + b_i for aligned arrays of ids."""
        u, i = np.asarray(user_ids), np.asarray(item_ids)
        return np.einsum("nk,nk->n", self.user_factors[u], self.item_factors[i]) + self.item_bias[i]


def synthetic_world(n_users: int = 200, n_items: int = 300, seed: int = 0, *, n_factors: int = 8,
                    min_per_user: int = 20, max_per_user: int = 60, exposure: float = 1.0, noise: float = 0.5,
                    start: str = "2020-01-01", days: int = 365) -> Tables:
    """Build a :class:`Tables` whose users have latent tastes and whose items have genres and titles.

    ``tables.truth`` is a :class:`SyntheticTruth` (``true_score``, latent vectors). ``n_factors`` ≤ 12.
    """
    if not 1 <= n_factors <= len(GENRES):
        raise ValueError(f"n_factors must be in 1..{len(GENRES)}; got {n_factors}")
    max_per_user = min(max_per_user, n_items)
    min_per_user = min(min_per_user, max_per_user)
    rng = np.random.default_rng(seed)
    genres = GENRES[:n_factors]
    # items: 1-3 genres each
    q = np.zeros((n_items + 1, n_factors))
    item_genres = []
    for i in range(1, n_items + 1):
        g = rng.choice(n_factors, rng.integers(1, min(3, n_factors) + 1), replace=False)
        q[i, g] = 1.0
        item_genres.append("|".join(genres[j] for j in sorted(g)))
    q[1:] += 0.1 * rng.standard_normal((n_items, n_factors))
    b = np.zeros(n_items + 1)
    b[1:] = 0.3 * rng.standard_normal(n_items)
    p = np.zeros((n_users + 1, n_factors))
    p[1:] = rng.standard_normal((n_users, n_factors))
    truth = SyntheticTruth(p, q, b, genres)

    scores = p[1:] @ q[1:].T + b[1:]  # (n_users, n_items)
    mu, sd = scores.mean(), scores.std() + 1e-9
    t0 = int(pd.Timestamp(start, tz="UTC").timestamp())
    rows_u, rows_i, rows_r, rows_t = [], [], [], []
    for u in range(1, n_users + 1):
        n = int(rng.integers(min_per_user, max_per_user + 1))
        w = np.exp(exposure * (scores[u - 1] - scores[u - 1].max()))
        items = rng.choice(n_items, n, replace=False, p=w / w.sum()) + 1
        z = (scores[u - 1, items - 1] - mu) / sd
        rating = np.clip(np.rint(3 + 1.2 * z + noise * rng.standard_normal(n)), 1, 5)
        ts = np.sort(t0 + rng.integers(0, days * 86400, n))
        rows_u += [str(u)] * n
        rows_i += [str(i) for i in items]
        rows_r += rating.tolist()
        rows_t += ts.tolist()
    inter = pd.DataFrame({"raw_user_id": rows_u, "raw_item_id": rows_i, "rating": rows_r, "timestamp": rows_t})
    inter = inter.sort_values("timestamp", kind="stable").reset_index(drop=True)  # a log, like a raw file
    titles = [f"{_ADJ[rng.integers(len(_ADJ))]} {_NOUN[rng.integers(len(_NOUN))]} ({2000 + i % 20})"
              for i in range(1, n_items + 1)]
    items_df = pd.DataFrame({"raw_item_id": [str(i) for i in range(1, n_items + 1)], "title": titles,
                             "categories": item_genres, "description": "", "brand": "",
                             "year": [2000 + i % 20 for i in range(1, n_items + 1)]})
    users_df = pd.DataFrame({"raw_user_id": [str(u) for u in range(1, n_users + 1)],
                             "gender": rng.choice(["F", "M"], n_users), "age": rng.integers(18, 70, n_users),
                             "occupation": rng.choice(["student", "engineer", "artist", "doctor", "other"], n_users),
                             "zip": ""})
    order_u = [str(u) for u in range(1, n_users + 1)]
    order_i = [str(i) for i in range(1, n_items + 1)]
    interactions, items, users = canonicalize(inter, items_df, users_df, item_order=order_i, user_order=order_u,
                                              source="synthetic")
    return Tables(name="synthetic", dataset="synthetic", interactions=interactions, items=items, users=users,
                  checksums={}, domain="movie", truth=truth)
