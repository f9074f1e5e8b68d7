"""Split protocols on the real ML-100K (and Gift_Cards): statistics checked against independent pandas
computations, leakage-free histories, determinism under a seed, and the published ML-1M numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reasonrec.data import load_tables, make_splits, synthetic_world
from reasonrec.data.schema import POINTWISE_COLUMNS, RANKING_COLUMNS
from reasonrec.errors import ConfigError

PROTOCOLS = ("collm", "kar", "starec", "tallrec")


@pytest.fixture(scope="module")
def ml100k(ml100k_dir):
    return load_tables("ml-100k", ml100k_dir.parent, cache=False)


@pytest.fixture(scope="module")
def raw(ml100k_dir):
    """u.data read independently of reasonrec."""
    return pd.read_csv(ml100k_dir / "u.data", sep="\t", names=["u", "i", "r", "t"])


@pytest.fixture(scope="module")
def splits(ml100k):
    return {p: make_splits(ml100k, p, seed=0) for p in PROTOCOLS}


def test_collm_ml100k_months(splits, raw):
    s = splits["collm"].stats()
    month = pd.to_datetime(raw["t"], unit="s").dt.to_period("M").astype(str)
    expect = {"train": month.between("1997-09", "1998-01").sum(), "valid": month.between("1998-02", "1998-03").sum(),
              "test": (month == "1998-04").sum()}
    assert {k: s[k] for k in expect} == expect == {"train": 66994, "valid": 23647, "test": 9359}
    assert (s["users"], s["items"], s["interactions"]) == (943, 1682, 100_000)
    assert s["positive_rate"] == pytest.approx((raw["r"] > 3).mean())
    assert (s["user_vocab"], s["item_vocab"]) == (944, 1683)
    sp = splits["collm"]
    assert list(sp.train.columns) == [*POINTWISE_COLUMNS, "warm"]
    assert sp.train["warm"].all()
    train_users, train_items = set(sp.train["user_id"]), set(sp.train["item_id"])
    want = sp.test["user_id"].isin(train_users) & sp.test["item_id"].isin(train_items)
    assert (sp.test["warm"] == want).all() and 0 < want.mean() < 1


def test_kar_ml100k(splits, raw):
    s = splits["kar"].stats()
    n = raw.groupby("u").size()
    cut = np.floor(0.8 * n)
    train = np.maximum(0, cut - 10).sum()
    test = (n - np.maximum(cut, 10)).sum()
    assert (s["train"], s["valid"], s["test"]) == (train, 0, test) == (70189, 0, 20381)
    assert (s["users"], s["items"], s["interactions"]) == (943, 1682, 100_000)
    assert splits["kar"].train["hist_item_ids"].map(len).max() == 10


def test_tallrec_ml100k(splits, ml100k, raw):
    s = splits["tallrec"].stats()
    assert (s["train"], s["valid"], s["test"]) == (8000, 1000, 1000)
    assert s["candidates_before_cut"] == 100_000 - 943 * 10
    # TALLRec walks users in order of first appearance in u.data: the test split holds the last users' samples
    last_user = raw["u"].drop_duplicates().iloc[-1]
    assert splits["tallrec"].test["user_id"].iloc[-1] == last_user
    few = make_splits(ml100k, "tallrec", seed=1, train_shots=64)
    assert len(few.train) == 64 and few.train["user_id"].isin(splits["tallrec"].train["user_id"]).all()
    assert not few.train.equals(make_splits(ml100k, "tallrec", seed=2, train_shots=64).train)


def test_starec_ml100k(splits, ml100k):
    sp = splits["starec"]
    s = sp.stats()
    assert (s["train_users"], s["test_users"], s["train"], s["test"]) == (400, 400, 400, 1200)
    assert list(sp.test.columns[: len(RANKING_COLUMNS)]) == list(RANKING_COLUMNS)
    assert not set(sp.train["user_id"]) & set(sp.test["user_id"])
    seen = ml100k.interactions.groupby("user_id")["item_id"].agg(set)
    for row in sp.test.itertuples():
        cands = list(row.candidate_ids)
        assert len(cands) == len(set(cands)) == 20 and row.item_id in cands
        assert not (set(cands) - {row.item_id}) & seen[row.user_id]  # negatives never interacted with
        assert row.label == 1 and len(row.hist_item_ids) <= 40
    draws = sp.test.groupby("user_id")["candidate_ids"].agg(lambda c: len({tuple(sorted(x)) for x in c}))
    assert (sp.test.groupby("user_id")["draw"].nunique() == 3).all() and (draws > 1).all()
    # sequences are truncated to the last 40 and every kept user/item has >= 10 interactions
    assert s["interactions"] <= 800 * 40


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_history_at_or_after_the_sample(splits, ml100k, protocol):
    when = ml100k.interactions.set_index(["user_id", "item_id"])["timestamp"]  # ML-100K: one rating per pair
    for df in (splits[protocol].train, splits[protocol].valid, splits[protocol].test):
        if not len(df):
            continue
        ex = df[["user_id", "timestamp", "hist_item_ids"]].explode("hist_item_ids").dropna()
        hist_ts = when.reindex(pd.MultiIndex.from_arrays([ex["user_id"], ex["hist_item_ids"].astype(np.int64)]))
        assert hist_ts.notna().all()
        assert (hist_ts.to_numpy() < ex["timestamp"].to_numpy()).all()


@pytest.mark.parametrize("protocol", ["collm", "kar", "tallrec"])
def test_history_is_the_last_interactions_before(splits, ml100k, protocol):
    inter = ml100k.interactions.reset_index().sort_values(["user_id", "timestamp", "index"], kind="stable")
    by_user = dict(tuple(inter.groupby("user_id")))
    test = splits[protocol].test
    for row in test.sample(25, random_state=0).itertuples():
        u = by_user[row.user_id]
        before = u[u["timestamp"] < row.timestamp].tail(10)
        assert list(row.hist_item_ids) == before["item_id"].tolist()
        assert list(row.hist_ratings) == before["rating"].tolist()
        assert list(row.hist_labels) == (before["rating"] > 3).astype(int).tolist()


def _assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    # column by column: assert_frame_equal on list columns is slow (one Python compare per row)
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for col in a.columns:
        if a[col].dtype == object:
            assert (a[col].map(len).to_numpy() == b[col].map(len).to_numpy()).all()
            if len(a):
                assert np.array_equal(np.concatenate(a[col].to_list()), np.concatenate(b[col].to_list()))
        else:
            assert a[col].dtype == b[col].dtype and np.array_equal(a[col].to_numpy(), b[col].to_numpy())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_same_seed_same_samples(ml100k, splits, protocol):
    again = make_splits(ml100k, protocol, seed=0)
    for name in ("train", "valid", "test"):
        _assert_same(getattr(splits[protocol], name), getattr(again, name))
    if protocol == "starec":
        other = make_splits(ml100k, protocol, seed=1)
        assert set(other.test["user_id"]) != set(splits[protocol].test["user_id"])


def test_options_are_typed_and_checked(ml100k):
    with pytest.raises(ConfigError, match="did you mean 'history_len'"):
        make_splits(ml100k, "kar", histroy_len=5)
    with pytest.raises(ConfigError, match="YYYY-MM"):
        make_splits(ml100k, "collm", train_months=("1997/09", "1998-01"))
    short = make_splits(ml100k, "kar", history_len=3, split="global")
    assert short.train["hist_item_ids"].map(len).max() == 3
    assert short.train["timestamp"].max() <= short.test["timestamp"].min()


def test_amazon_gift_cards_all_protocols(amazon_dir):
    t = load_tables("amazon", amazon_dir.parent, category="Gift_Cards", cache=False)
    s = make_splits(t, "collm").stats()
    # 2017 is the last year with December data; months 11-12 are halved into valid / test (CoLLM Book notebook)
    assert s["months"]["train_months"] == ["2017-01", "2017-10"] and s["valid"] in (s["test"], s["test"] - 1)
    year = pd.to_datetime(t.interactions["timestamp"], unit="s").dt.year
    assert s["train"] + s["valid"] + s["test"] == (year == 2017).sum() == 1007
    assert s["positive_rate"] == pytest.approx((t.interactions["rating"][year == 2017] > 4).mean())
    for p in ("kar", "starec", "tallrec"):
        st = make_splits(t, p).stats()
        assert st["train"] > 0 and st["test"] > 0


def test_synthetic_world_supports_every_protocol():
    w = synthetic_world(80, 120, seed=0)
    for p in PROTOCOLS:
        sp = make_splits(w, p, seed=0)
        assert len(sp.train) and len(sp.test)


def test_ml1m_published_numbers(ml1m_dir):
    """CoLLM / TrackRec / ThinkRec, R4ec Tab. 1 and STARec Tab. 3 (runs only with the full ML-1M files)."""
    t = load_tables("ml-1m", ml1m_dir.parent)
    c = make_splits(t, "collm").stats()
    assert (c["train"], c["valid"], c["test"]) == (33_891, 10_401, 7_331)
    assert (c["user_vocab"], c["item_vocab"]) == (839, 3_256)  # TrackRec Tab. 1 counts the padding id 0
    assert (c["users"], c["items"]) == (838, 3_255)
    k = make_splits(t, "kar").stats()
    assert (k["users"], k["items"], k["interactions"]) == (6_040, 3_706, 1_000_209)
    s = make_splits(t, "starec").stats()
    assert (s["test_users"], s["test_interactions"]) == (1_000, 40_000)
    assert (s["train_users"], s["train_interactions"]) == (1_000, 40_000)


def test_collm_ml1m_month_boundaries_follow_the_notebook(shared_data, tmp_path, monkeypatch):
    """CoLLM's slots 14-23 / 24-28 / 29-33 from 2000-04 (UTC): check each edge with a hand-made ratings.dat."""
    import shutil

    monkeypatch.setenv("REASONREC_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "ml-1m"
    d.mkdir()
    for f in ("movies.dat", "users.dat"):
        shutil.copy(shared_data / "ml-1m" / f, d)

    def ts(s):
        return int(pd.Timestamp(s, tz="UTC").timestamp())

    events = [("2000-04-25 23:05:32", None), ("2001-05-31 23:59:59", None), ("2001-06-01 00:00:00", "train"),
              ("2002-03-31 23:59:59", "train"), ("2002-04-01 00:00:00", "valid"), ("2002-08-31 23:59:59", "valid"),
              ("2002-09-01 00:00:00", "test"), ("2003-01-31 23:59:59", "test"), ("2003-02-28 17:49:50", None)]
    lines = [f"1::{i + 1}::{4 if i % 2 else 2}::{ts(t)}" for i, (t, _) in enumerate(events)]
    (d / "ratings.dat").write_text("\n".join(lines) + "\n")
    sp = make_splits(load_tables("ml-1m", tmp_path, cache=False), "collm")
    got = {name: sorted(getattr(sp, name)["timestamp"].tolist()) for name in ("train", "valid", "test")}
    for name in ("train", "valid", "test"):
        assert got[name] == sorted(ts(t) for t, s in events if s == name)
    # every earlier in-window interaction (likes and dislikes) is history, none from outside the window
    assert len(sp.test["hist_item_ids"].iloc[-1]) == 5
