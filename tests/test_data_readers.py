"""Readers of the official raw formats, the table cache, and the errors for missing / malformed files."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from _data_files import copy_ml100k

from reasonrec.data import load_tables, synthetic_world
from reasonrec.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS
from reasonrec.errors import DataError

ML100K_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONREC_CACHE_DIR", str(tmp_path / "cache"))


def test_ml100k_tables_match_the_published_counts(ml100k_dir):
    t = load_tables("ml-100k", ml100k_dir.parent)
    inter = t.interactions
    assert list(inter.columns) == list(INTERACTION_COLUMNS)
    assert len(inter) == 100_000 and inter["user_id"].nunique() == 943 and inter["item_id"].nunique() == 1682
    assert inter["rating"].value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]
    # raw file order is kept (ties are broken by it) and MovieLens ids keep their raw values
    assert inter.iloc[0].tolist() == [196, 242, 3.0, 881250949]
    assert inter["user_id"].min() == 1 and inter["item_id"].max() == 1682
    assert list(t.items.columns[: len(ITEM_COLUMNS)]) == list(ITEM_COLUMNS)
    toy = t.items.set_index("item_id").loc[1]
    assert toy["title"] == "Toy Story (1995)" and toy["categories"] == "Animation|Children's|Comedy"
    assert toy["year"] == 1995
    u1 = t.users.set_index("user_id").loc[1]
    assert (u1["age"], u1["gender"], u1["occupation"], u1["zip"]) == (24, "M", "technician", "85711")
    assert t.checksums["u.data"] == ML100K_SHA256 and t.domain == "movie"


def test_table_cache_is_reused_and_invalidated(ml100k_dir, tmp_path):
    d = copy_ml100k(ml100k_dir, tmp_path / "data")
    first = load_tables("ml-100k", d.parent)
    cached = list((tmp_path / "cache" / "tables").iterdir())
    assert len(cached) == 1 and (cached[0] / "interactions.parquet").is_file()
    again = load_tables("ml-100k", d.parent)
    pd.testing.assert_frame_equal(first.interactions, again.interactions)
    pd.testing.assert_frame_equal(first.items, again.items)
    assert again.checksums == first.checksums
    # a changed raw file gets a new cache entry with the new content
    data = (d / "u.data").read_bytes()
    (d / "u.data").write_bytes(data.replace(b"196\t242\t3\t", b"196\t242\t4\t", 1))
    changed = load_tables("ml-100k", d.parent)
    assert changed.interactions["rating"].iloc[0] == 4.0 and first.interactions["rating"].iloc[0] == 3.0
    assert changed.checksums["u.data"] != first.checksums["u.data"]
    assert len(list((tmp_path / "cache" / "tables").iterdir())) == 2


@pytest.mark.parametrize("bad, lineno, words", [
    ("1\t2\tx\t881250949\n", 3, "non-integer rating"),
    ("1\t2\t3\n", 3, "missing field"),
    ("1\t2\t3\t4\t5\n", 3, "5 fields instead of 4"),
    ("1\t2\t9\t881250949\n", 3, "rating out of range"),
])
def test_malformed_line_names_file_and_line(ml100k_dir, tmp_path, bad, lineno, words):
    d = copy_ml100k(ml100k_dir, tmp_path / "data")
    lines = (d / "u.data").read_text().splitlines(keepends=True)
    (d / "u.data").write_text("".join(lines[:2]) + bad + "".join(lines[2:10]))
    with pytest.raises(DataError, match=rf"u\.data:{lineno}: {words}"):
        load_tables("ml-100k", d.parent, cache=False)


def test_truncated_last_line(ml100k_dir, tmp_path):
    d = copy_ml100k(ml100k_dir, tmp_path / "data")
    data = (d / "u.data").read_bytes()[:1000]  # cut in the middle of a line
    (d / "u.data").write_bytes(data)
    n = data.count(b"\n") + 1
    with pytest.raises(DataError, match=rf"u\.data:{n}: "):
        load_tables("ml-100k", d.parent, cache=False)


def test_missing_dataset_says_where_to_put_it(tmp_path, shared_data):
    with pytest.raises(DataError, match=r"MovieLens-100K not found.*--data-dir.*reasonrec data fetch ml-100k"):
        load_tables("ml-100k", tmp_path)
    if not (shared_data / "ml-1m" / "ratings.dat").exists():
        with pytest.raises(DataError, match=r"missing ratings\.dat"):
            load_tables("ml-1m", shared_data)
    with pytest.raises(DataError, match="Yelp Open Dataset not found"):
        load_tables("yelp", tmp_path)
    with pytest.raises(DataError, match="needs a category"):
        load_tables("amazon", tmp_path)


def test_ml1m_reader_on_the_real_movies_and_users(shared_data, tmp_path):
    src = shared_data / "ml-1m"
    d = tmp_path / "ml-1m"
    d.mkdir()
    shutil.copy(src / "movies.dat", d)
    shutil.copy(src / "users.dat", d)
    (d / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::5::978298413\n")
    t = load_tables("ml-1m", tmp_path, cache=False)
    assert len(t.items) == 3883 and len(t.users) == 6040 and len(t.interactions) == 3
    # movie ids 1..3952 have gaps: canonical ids are contiguous, in raw-id order
    raw = t.items.set_index("item_id")["raw_item_id"]
    assert raw.loc[t.interactions["item_id"]].tolist() == ["1193", "661", "1193"]
    assert t.items["item_id"].tolist() == list(range(1, 3884))
    cuckoo = t.items.set_index("raw_item_id").loc["1193"]
    assert cuckoo["title"].startswith("One Flew Over the Cuckoo") and cuckoo["categories"] == "Drama"
    u1 = t.users.set_index("user_id").loc[1]
    assert (u1["gender"], u1["age"], u1["occupation"]) == ("F", 1, "K-12 student")
    assert "Misérables" in " ".join(t.items["title"])  # latin-1 decoded
    (d / "ratings.dat").write_text("1::1193::5::978300760\n1::661\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2: missing field"):
        load_tables("ml-1m", tmp_path, cache=False)


def test_amazon_2018_gift_cards(amazon_dir):
    t = load_tables("amazon", amazon_dir.parent, category="Gift_Cards")
    inter = t.interactions
    # 2,972 reviews, of which 7 repeat a (user, item) pair of 6 pairs: the latest review of each is kept
    assert (len(inter), inter["user_id"].nunique(), inter["item_id"].nunique()) == (2965, 458, 148)
    assert t.cleaning["duplicates_dropped"] == 7 and not inter.duplicated(["user_id", "item_id"]).any()
    assert (t.items["title"] != "").all() and t.items["categories"].str.contains("Gift Cards").mean() > 0.9
    assert t.checksums["Gift_Cards_5.json.gz"] == "41e1f0e50d3c1c9d7d949fb6315944c8bde51ea6b7429a29fdd0d02cbc07ef25"
    assert t.name == "amazon-Gift_Cards" and t.domain == "gift card"
    assert sorted(inter["user_id"].unique()) == list(range(1, 459))  # contiguous ids from 1


def test_amazon_truncated_gzip_and_bad_json(amazon_dir, tmp_path):
    d = tmp_path / "amazon-2018"
    d.mkdir()
    raw = (amazon_dir / "Gift_Cards_5.json.gz").read_bytes()
    (d / "Gift_Cards_5.json.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_tables("amazon", tmp_path, category="Gift_Cards", cache=False)
    lines = gzip.decompress(raw).decode().splitlines()
    (d / "Gift_Cards_5.json.gz").unlink()
    (d / "Gift_Cards_5.json").write_text("\n".join(lines[:4] + [lines[4][:50]] + lines[5:8]) + "\n")
    with pytest.raises(DataError, match=r"Gift_Cards_5\.json:5: not a JSON object"):
        load_tables("amazon", tmp_path, category="Gift_Cards", cache=False)


def test_amazon_2014_format(tmp_path):
    d = tmp_path / "amazon"
    d.mkdir()
    reviews = [
        {"reviewerID": "A1", "asin": "0001", "overall": 5.0, "unixReviewTime": 1388534400, "helpful": [0, 0]},
        {"reviewerID": "A2", "asin": "0001", "overall": 2.0, "unixReviewTime": 1388620800, "helpful": [1, 2]},
        {"reviewerID": "A1", "asin": "0002", "overall": 4.0, "unixReviewTime": 1388707200, "helpful": [0, 0]},
    ]
    with gzip.open(d / "reviews_Books_5.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in reviews) + "\n")
    # 2014 metadata lines are Python literals, not JSON
    meta = ["{'asin': '0001', 'title': 'Dune &amp; Sons', 'categories': [['Books', 'Science Fiction'], ['Books']], "
            "'description': 'A desert planet.', 'brand': 'Ace'}",
            "{'asin': '0002', 'categories': [['Books']], 'salesRank': {'Books': 5}}",
            "{'asin': '9999', 'title': 'never reviewed'}"]
    with gzip.open(d / "meta_Books.json.gz", "wt") as f:
        f.write("\n".join(meta) + "\n")
    t = load_tables("amazon", tmp_path, category="Books", cache=False)
    assert t.domain == "book" and len(t.interactions) == 3 and len(t.items) == 2
    dune = t.items.set_index("raw_item_id").loc["0001"]
    assert dune["title"] == "Dune & Sons" and dune["categories"] == "Books|Science Fiction"
    assert dune["description"] == "A desert planet." and dune["brand"] == "Ace"
    assert t.items.set_index("raw_item_id").loc["0002", "title"] == "item 0002"  # a row without a title
    assert (t.cleaning["titles_from_id"], t.cleaning["items_without_metadata"]) == (1, 0)
    with gzip.open(d / "reviews_Books_5.json.gz", "wt") as f:
        f.write(json.dumps(reviews[0]) + "\n" + json.dumps({"asin": "0003", "overall": 3.0}) + "\n")
    with pytest.raises(DataError, match=r"reviews_Books_5\.json\.gz:2: review has no 'reviewerID'"):
        load_tables("amazon", tmp_path, category="Books", cache=False)


def test_yelp_reader(tmp_path):
    d = tmp_path / "yelp"
    d.mkdir()
    business = [{"business_id": "b1", "name": "Taco Town", "categories": "Mexican, Restaurants", "city": "Tucson",
                 "state": "AZ"},
                {"business_id": "b2", "name": "Book Nook", "categories": None, "city": "Reno", "state": "NV"}]
    reviews = [{"review_id": "r1", "user_id": "u1", "business_id": "b1", "stars": 5, "date": "2019-03-01 10:00:00"},
               {"review_id": "r2", "user_id": "u2", "business_id": "b2", "stars": 2, "date": "2020-07-15 08:30:00"},
               {"review_id": "r3", "user_id": "u1", "business_id": "b2", "stars": 4, "date": "2021-01-02 00:00:00"}]
    (d / "yelp_academic_dataset_business.json").write_text("\n".join(map(json.dumps, business)) + "\n")
    (d / "yelp_academic_dataset_review.json").write_text("\n".join(map(json.dumps, reviews)) + "\n")
    t = load_tables("yelp", tmp_path, cache=False)
    assert t.domain == "business" and len(t.interactions) == 3
    assert t.interactions["timestamp"].iloc[0] == int(pd.Timestamp("2019-03-01 10:00:00", tz="UTC").timestamp())
    taco = t.items.set_index("raw_item_id").loc["b1"]
    assert taco["title"] == "Taco Town" and taco["categories"] == "Mexican|Restaurants"
    assert taco["description"] == "Tucson, AZ"
    reviews[1]["date"] = "15/07/2020"
    (d / "yelp_academic_dataset_review.json").write_text("\n".join(map(json.dumps, reviews)) + "\n")
    with pytest.raises(DataError, match=r"review\.json:2: 'date'"):
        load_tables("yelp", tmp_path, cache=False)


def test_synthetic_world_has_known_truth():
    w = synthetic_world(150, 200, seed=3)
    again = synthetic_world(150, 200, seed=3)
    pd.testing.assert_frame_equal(w.interactions, again.interactions)
    inter = w.interactions
    assert inter["user_id"].nunique() == 150 and inter["item_id"].max() <= 200
    score = w.truth.true_score(inter["user_id"], inter["item_id"])
    # ratings follow the true affinity: strong rank correlation, and liked items score higher
    rho = pd.Series(score).corr(inter["rating"].astype(float).reset_index(drop=True), method="spearman")
    assert rho > 0.6
    liked = inter["rating"].to_numpy() > 3
    assert score[liked].mean() > score[~liked].mean() + 0.5
    assert 0.2 < liked.mean() < 0.9
    # item text carries the latent genres
    it = w.items.set_index("item_id")
    top_dim = np.argmax(w.truth.item_factors[1:], axis=1)
    assert all(w.truth.genres[g] in it.loc[i + 1, "categories"] for i, g in enumerate(top_dim))
    assert synthetic_world(150, 200, seed=4).interactions.shape != inter.shape or not \
        synthetic_world(150, 200, seed=4).interactions.equals(inter)
