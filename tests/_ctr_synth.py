"""Synthetic tables and pointwise samples in the canonical schema, with a learnable signal (shared by CTR and
knowledge tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def synth_world(n_users: int = 60, n_items: int = 40, n_samples: int = 1500, hist_len: int = 8, seed: int = 0):
    """Users like items of their favourite genre; the label follows that rule with 10% noise."""
    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    item_genre = rng.integers(0, len(genres), n_items + 1)
    items = pd.DataFrame({
        "item_id": np.arange(1, n_items + 1),
        "raw_item_id": [str(i) for i in range(1, n_items + 1)],
        "title": [f"{genres[item_genre[i]]} movie {i}" for i in range(1, n_items + 1)],
        "categories": [genres[item_genre[i]] + ("|Drama" if i % 5 == 0 else "") for i in range(1, n_items + 1)],
        "description": "", "brand": "", "year": pd.array([1990 + i % 10 for i in range(n_items)], dtype="Int64"),
    })
    gender = rng.choice(["M", "F"], n_users + 1)
    fav = np.where(gender == "M", 0, 1)  # the favourite genre follows a demographic field: learnable from little data
    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1), "raw_user_id": [str(u) for u in range(1, n_users + 1)],
        "gender": gender[1:], "age": pd.array(rng.integers(18, 60, n_users), dtype="Int64"),
        "occupation": rng.choice(["a", "b", "c"], n_users), "zip": "00000",
    })
    u = rng.integers(1, n_users + 1, n_samples)
    i = rng.integers(1, n_items + 1, n_samples)
    label = (item_genre[i] == fav[u]).astype(np.int8)
    flip = rng.random(n_samples) < 0.1
    label = np.where(flip, 1 - label, label).astype(np.int8)
    hists, rats, labs = [], [], []
    for uu in u:
        k = int(rng.integers(0, hist_len + 1))
        h = rng.integers(1, n_items + 1, k)
        r = np.where(item_genre[h] == fav[uu], 5.0, 1.0).astype(np.float32)
        hists.append(h.astype(np.int64))
        rats.append(r)
        labs.append((r > 3).astype(np.int8))
    df = pd.DataFrame({"user_id": u, "item_id": i, "rating": np.where(label, 5.0, 1.0).astype(np.float32),
                       "label": label, "timestamp": np.arange(n_samples), "hist_item_ids": hists,
                       "hist_ratings": rats, "hist_labels": labs})
    return items, users, df, item_genre
