"""The knowledge R4ec's LLM reads is strictly pre-sample (issue 17, deviation 1), on the real ML-100K files.

For every user and item of a kar split, no knowledge prompt — inference or construction — contains an interaction
at or after the earliest CTR sample that knowledge serves; the former ``train`` window is shown to violate it,
so the check can fail.
"""

from __future__ import annotations

import re

import pytest

from reasonrec.config import DataSection
from reasonrec.methods import r4ec_steps as steps
from reasonrec.methods.common import prepare_splits
from reasonrec.methods.r4ec import SubsetSection
from reasonrec.runs import RunDir


def _ctx(tmp_path, ml100k_dir, window):
    data = DataSection(dataset="ml-100k", protocol="kar", data_dir=str(ml100k_dir))
    subset = SubsetSection(users=60, items=80, knowledge_window=window)
    return prepare_splits(data, RunDir(tmp_path / window), subset=subset)


def _shown(messages) -> list[tuple[str, int]]:
    """The [TITLE, RATING] entries a rendered prompt shows."""
    text = messages[-1]["content"]
    return [(t, int(r)) for t, r in re.findall(r'\["(.+?)", (\d+)\]', text)]


@pytest.fixture(scope="module")
def pre(tmp_path_factory, ml100k_dir):
    return _ctx(tmp_path_factory.mktemp("pre"), ml100k_dir, "pre_sample")


def test_user_prompts_show_only_interactions_before_the_users_first_sample(pre):
    ev = pre.tables.interactions
    ids, fields = pre.entities("user")
    assert len(ids) == len(pre.first_sample_ts["user"]) > 40
    for uid, f in zip(ids, fields, strict=True):
        t0 = pre.first_sample_ts["user"][uid]
        rows = pre.knowledge_rows("user", uid)["history"]
        # up to history_len: ML-100K has tied timestamps, and a tie with the first sample is not "before" it
        assert 0 < len(rows) <= pre.history_len and (rows["timestamp"] < t0).all()
        # the prompt shows exactly these interactions, and the user rated nothing else it shows before t0
        titles = {str(pre._items[int(i)]["title"]) for i in rows["item_id"]}
        shown = _shown(steps.prompt("user", "reason", pre.domain, f, with_target=False))
        assert {t for t, _ in shown} == titles
        mine = ev[(ev["user_id"] == uid)]
        late = {str(pre._items[int(i)]["title"]) for i in mine[mine["timestamp"] >= t0]["item_id"]}
        assert not ({t for t, _ in shown} & late - titles)


def test_item_prompts_show_only_interactions_before_the_items_first_sample(pre):
    ids, fields = pre.entities("item")
    with_neighbours = 0
    for iid, f in zip(ids, fields, strict=True):
        t0 = pre.first_sample_ts["item"][iid]
        rows = pre.knowledge_rows("item", iid)
        for part in rows.values():
            assert (part["timestamp"] < t0).all(), (iid, part)
        assert len(rows["pos"]) <= 1 and len(rows["neg"]) <= 1  # R4ec: one liker and one disliker
        shown = _shown(steps.prompt("item", "reason", pre.domain, f, with_target=False))
        hist_rows = sum(len(v) for k, v in rows.items() if "_hist_" in k)
        assert len(shown) == hist_rows
        with_neighbours += bool(len(rows["pos"]) and len(rows["neg"]))
    assert with_neighbours > len(ids) // 2


def test_construction_cases_stay_inside_the_windows(pre):
    ev = pre.tables.interactions
    for case in pre.cases("user", 0.5):
        uid, iid, ts = (int(x) for x in case["key"].split(":")[1:])
        assert ts < pre.first_sample_ts["user"][uid]  # the supervision target is pre-sample too
        target = ev[(ev["user_id"] == uid) & (ev["item_id"] == iid)]
        assert target["timestamp"].item() == ts
        assert case["label"] == int(target["rating"].item() > pre.like_threshold)
    items = pre.cases("item", 0.5)
    assert items
    for case in items:
        iid, uid = (int(x) for x in case["key"].split(":")[1:])
        rated = ev[(ev["user_id"] == uid) & (ev["item_id"] == iid)]
        assert (rated["timestamp"] < pre.first_sample_ts["item"][iid]).all()
        assert len(case["fields"]["pos_histories"]) <= 1 and len(case["fields"]["neg_histories"]) <= 1


def test_the_train_window_leaks_and_the_check_sees_it(tmp_path, ml100k_dir):
    ctx = _ctx(tmp_path, ml100k_dir, "train")
    ev = ctx.tables.interactions
    ids, fields = ctx.entities("user")
    leaked = 0
    for uid, f in zip(ids, fields, strict=True):
        t0 = ctx.first_sample_ts["user"][uid]
        mine = ev[ev["user_id"] == uid]
        late = {str(ctx._items[int(i)]["title"]) for i in mine[mine["timestamp"] >= t0]["item_id"]}
        early = {str(ctx._items[int(i)]["title"]) for i in mine[mine["timestamp"] < t0]["item_id"]}
        shown = {t for t, _ in _shown(steps.prompt("user", "reason", ctx.domain, f, with_target=False))}
        leaked += bool(shown & (late - early))
    assert leaked == len(ids)  # every user's prompt shows their own CTR samples (and so their labels)
