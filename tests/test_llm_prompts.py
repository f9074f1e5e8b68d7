"""Prompt templates: every task × domain renders from real ML-100K sample fields; errors name file and field."""

from __future__ import annotations

import pandas as pd
import pytest

from reasonrec.errors import ConfigError
from reasonrec.llm.prompts import DOMAINS, TASKS, load_template, render, sample_fields


@pytest.fixture(scope="module")
def ml100k_sample(ml100k_dir):
    """One real ranking-style sample built straight from u.data / u.item / u.user."""
    genres = [g.split("|")[0] for g in (ml100k_dir / "u.genre").read_text(encoding="latin-1").split("\n") if g]
    cols = ["item_id", "title", "date", "video", "url", *genres]
    raw = pd.read_csv(ml100k_dir / "u.item", sep="|", header=None, names=cols, encoding="latin-1")
    items = pd.DataFrame({"item_id": raw.item_id, "raw_item_id": raw.item_id.astype(str), "title": raw.title,
                          "categories": raw[genres].apply(lambda r: "|".join(g for g in genres if r[g]), axis=1),
                          "description": "", "brand": "", "year": pd.to_datetime(raw.date, errors="coerce").dt.year})
    users = pd.read_csv(ml100k_dir / "u.user", sep="|", header=None,
                        names=["user_id", "age", "gender", "occupation", "zip"])
    data = pd.read_csv(ml100k_dir / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "ts"])
    u = data[data.user_id == 1].sort_values("ts")
    sample = {"user_id": 1, "item_id": int(u.item_id.iloc[-1]), "hist_item_ids": u.item_id.iloc[:10].tolist(),
              "hist_ratings": u.rating.iloc[:10].astype(float).tolist(), "hist_labels": (u.rating.iloc[:10] > 3).tolist(),
              "candidate_ids": u.item_id.iloc[-5:].tolist()}
    return sample_fields(sample, items, users), items


EXTRA = {"preference": "Likes dramas.", "reflection": "Too generic.", "item_fact": "A 1995 comedy.",
         "pos_histories": [["Heat (1995)", "Fargo (1996)"]], "neg_histories": [["Babe (1995)"]],
         "summary": "Prefers classics.", "memory": "Enjoys sci-fi.", "prediction": "Predicted liked",
         "feedback": "Disliked"}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_every_template_renders(task, domain, ml100k_sample):
    fields, _ = ml100k_sample
    messages = render(task, domain, **fields, **EXTRA)
    assert messages[-1]["role"] == "user" and len(messages[-1]["content"]) > 50
    text = "\n".join(m["content"] for m in messages)
    assert "{{" not in text and "{%" not in text
    if task.startswith(("r4ec_user", "trackrec", "starec", "thinkrec")):
        assert fields["history"][0]["title"] in text
    if task in ("r4ec_user_reason", "trackrec_rec", "thinkrec_rec", "starec_memory", "r4ec_item_reason"):
        assert fields["target"]["title"] in text
    if task == "starec_rank":
        assert all(c["title"] in text for c in fields["candidates"])
    noun = {"movie": "movie", "book": "book", "music": "song", "business": "business"}[domain]
    assert noun in text.lower()
    assert load_template(task, domain).source  # every template names the paper it reproduces


def test_sample_fields_from_real_data(ml100k_sample):
    fields, items = ml100k_sample
    assert len(fields["history"]) == 10 and len(fields["candidates"]) == 5
    h = fields["history"][0]
    assert h["title"].endswith(")") and h["year"] is None  # ML titles carry the year already
    assert isinstance(h["liked"], bool) and h["rating"] in (1, 2, 3, 4, 5)
    assert fields["user"]["occupation"] and fields["user"]["age"] == 24
    assert fields["target"]["categories"]


def test_missing_field_and_unknown_names_are_clear_errors():
    with pytest.raises(ConfigError, match=r"trackrec_rec/movie.yaml.*'target' is undefined"):
        render("trackrec_rec", "movie", history=[])
    with pytest.raises(ConfigError, match="did you mean 'starec_rank'"):
        load_template("starec_rnak", "movie")
    with pytest.raises(ConfigError, match="domains"):
        load_template("starec_rank", "games")
