"""Issue 17, deviations 4 and 7: the knowledge encoder reads its own maximum input and returns unit vectors;
the kar protocol's k-core filter (KAR / R4ec ``preprocess_amz.py``: users ≥ 60, items ≥ 40) on real ML-100K."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reasonrec.data import load_tables, make_splits


@pytest.mark.parametrize("name", ["minilm", "minilm:mean"])  # sentence-transformers path and plain pooling
def test_encoder_reads_past_256_tokens_and_normalises(name):
    from reasonrec.knowledge import load_encoder

    enc = load_encoder(name)
    assert enc.max_length == 512  # MiniLM's position embeddings, not sentence-transformers' 256
    head = " ".join(["The user likes slow dramas and period pieces with strong female leads."] * 25)  # ~350 tok
    a, b = enc.encode([head + " Hates horror.", head + " Loves horror."])
    assert not np.allclose(a, b, atol=1e-6)  # the tail beyond token 256 still reaches the vector
    assert np.allclose(np.linalg.norm(enc.encode(["short", head]), axis=1), 1.0, atol=1e-5)


def _kar_filter_kcore(ev, user_core, item_core):
    """KAR's ``filter_Kcore`` (preprocess_amz.py), written out the slow way as the reference."""
    while True:
        users, items = ev["user_id"].value_counts(), ev["item_id"].value_counts()
        ok = ev["user_id"].map(users).ge(user_core) & ev["item_id"].map(items).ge(item_core)
        if ok.all():
            return ev
        ev = ev[ok]


def test_kar_k_core_keeps_only_dense_users_and_items(ml100k_dir):
    tables = load_tables("ml-100k", ml100k_dir)
    plain = make_splits(tables, "kar", seed=0)
    cored = make_splits(tables, "kar", seed=0, user_core=60, item_core=40)
    ref = _kar_filter_kcore(tables.interactions, 60, 40)
    samples = pd.concat([cored.train, cored.test])
    assert set(samples["user_id"]) == set(ref["user_id"])  # every core user has > 10 interactions: samples
    assert set(samples["item_id"]) <= set(ref["item_id"])
    assert len(samples) == len(ref) - 10 * ref["user_id"].nunique()  # all but each user's first 10
    assert samples["user_id"].nunique() < plain.train["user_id"].nunique()
    # ML-100K / ML-1M default to no filter (KAR's preprocess_ml-1m.py), so the default split is unchanged
    assert make_splits(tables, "kar", seed=0).options.user_core == 0
