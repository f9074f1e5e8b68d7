"""STARec steps without a run: the ranking parser on messy outputs, screening, the memory store's commit / torn-line
recovery, and the slow-thinking memory-update loop on the tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reasonrec.methods import starec_steps as steps

CANDS = [{"title": t, "item_id": i} for i, t in enumerate(
    ["Heat (1995)", "Heat and Dust (1983)", "Matrix, The (1999)", "Alien (1979)", "Up (2009)"])]
TITLES = [c["title"] for c in CANDS]


@pytest.mark.parametrize(("text", "order", "dups", "missing", "ok"), [
    # think block with numbered scratch lines, then the answer
    ("<think>\n1. Up (2009) maybe\n</think>\n1. Alien (1979) - scary\n2. Up (2009) - fun\n3. Heat (1995) - tense\n"
     "4. Heat and Dust (1983) - slow\n5. The Matrix (1999) - cool", [3, 4, 0, 1, 2], 0, 0, True),
    # bold titles, no years, a duplicate, missing items appended in the given order
    ("**1. Heat and Dust** - x\n**2. Alien** - y\n3. Alien (1979) - again", [1, 3, 0, 2, 4], 1, 3, True),
    # "1)" numbering, out of order numbers sorted, an unknown title skipped
    ("2) Up\n1) the matrix\n3) Casablanca (1942)", [2, 4, 0, 1, 3], 0, 3, True),
    # unclosed think block (ran out of tokens): nothing ranked, the given order stands
    ("<think>\n1. Heat (1995)\n2. Alien (1979)", [0, 1, 2, 3, 4], 0, 0, False),
    ("I cannot rank these.", [0, 1, 2, 3, 4], 0, 0, False),
])
def test_parse_rank_on_messy_outputs(text, order, dups, missing, ok):
    r = steps.parse_rank(text, CANDS)
    assert (r.order, r.duplicates, r.missing, r.ok) == (order, dups, missing, ok)
    assert sorted(r.order) == list(range(len(CANDS)))   # always a permutation: scores for every candidate
    s = steps.scores_from_order(r.order)
    assert list(np.argsort(-s)) == r.order


def test_screening_reasons():
    good = "<think>likes thrillers</think>\n" + "\n".join(f"{i}. {t} - ok" for i, t in enumerate(TITLES, 1))
    assert steps.screen(good, TITLES, target_pos=0, ndcg_threshold=0.9) is None
    assert steps.screen(good, TITLES, target_pos=4, ndcg_threshold=0.5) == "low_ndcg"       # NDCG@10 at 5 = .387
    assert steps.screen(good.split("</think>\n")[1], TITLES, 0, 0.5) == "missing_cot"
    assert steps.screen("<think>x</think> no list", TITLES, 0, 0.5) == "no_ranking"
    partial = "<think>x</think>\n1. Heat (1995) - a\n2. Up (2009) - b"
    assert steps.screen(partial, TITLES, 0, 0.5) == "broken_format"
    assert steps.screen_memory("<think>t</think>\nUpdated User description: likes noir") is None
    assert steps.screen_memory("Updated User description: likes noir") == "missing_cot"
    assert steps.screen_memory("<think>t</think> nothing") == "no_preference"
    chat = [{"role": "user", "content": "rank"}]
    again = steps.augment_prompt(chat, good, "low_ndcg", 5)
    assert again[1] == {"role": "assistant", "content": good} and "position 5" in again[2]["content"]
    assert "Heat (1995)" not in again[2]["content"]   # the rethink never names the held-out item


def test_memory_store_commits_per_user_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "memories.jsonl"
    store = steps.MemoryStore(path)
    for u in (1, 2):
        store.commit({"user_id": u, "versions": [{"version": 0, "text": "", "cause": "init"}]})
    with open(path, "ab") as f:   # a kill -9 inside the third user's write
        f.write(b'{"user_id": 3, "versions": [{"ver')
    again = steps.MemoryStore(path)
    assert sorted(again.users) == [1, 2]
    assert path.read_bytes().count(b"\n") == 2 and json.loads(path.read_text().splitlines()[-1])["user_id"] == 2
    assert [r["user_id"] for r in again.rows()] == [1, 2]


def _case(uid: int, liked: list[bool]) -> steps.ReplayCase:
    hist = [{"title": "Heat (1995)", "year": None, "categories": "Action", "liked": True, "rating": 5, "item_id": 0}]
    walk = [{"item": {"title": f"Film {k} (1990)", "year": None, "categories": "Drama", "liked": lk,
                      "rating": 5 if lk else 1, "item_id": 10 + k},
             "cands": [{"title": f"Film {k} (1990)", "year": None, "categories": "Drama", "item_id": 10 + k}],
             "pos": 0} for k, lk in enumerate(liked)]
    return steps.ReplayCase(steps.Memory(uid, {"gender": "F", "age": 25, "occupation": "writer"}, "", hist), walk)


def test_memory_update_loop_on_the_tiny_model(tiny_model_path):
    """One candidate per step: the real item is always ranked first ("Predicted Liked"), so every disliked item is
    a discrepancy and triggers a reflection; liked items are only appended. Each step is a new memory version."""
    from reasonrec.llm.base import load_llm

    llm = load_llm(str(tiny_model_path), backend="transformers")
    cases = [_case(1, [False, True, False]), _case(2, [True, True, True])]
    out = steps.replay(llm, "movie", cases, reflect=True, history_len=5, rank_tokens=40, memory_tokens=24, seed=0,
                       temperature=1.0)
    a, b = out
    assert [v["cause"] for v in a.versions] == ["init", "reflect", "append", "reflect"]
    assert [v["version"] for v in a.versions] == [0, 1, 2, 3] and a.memory.version == 3
    assert [v["history"] for v in a.versions] == [1, 2, 3, 4]
    assert a.versions[1]["text"] and a.versions[1]["text"] == a.versions[2]["text"]   # append keeps the text
    assert a.versions[3]["prediction"].startswith("Predicted Liked") and a.versions[3]["feedback"] == \
        "Disliked (rated 1 out of 5)"
    assert len(a.memory_samples) == 2 and "Updated User description:" in a.memory_samples[0]["completion"]
    f = a.memory_samples[0]["followup"]   # the indirect reward's follow-up: the next step, history as it was then
    assert f["candidates"] == cases[0].steps[1]["cands"] and [h["title"] for h in f["history"]] == \
        ["Heat (1995)", "Film 0 (1990)"]
    assert a.memory_samples[1]["followup"] is None
    assert [v["cause"] for v in b.versions] == ["init", "append", "append", "append"] and b.memory.description == ""
    # w/o self-reflection: the same discrepancies are only appended
    flat = steps.replay(llm, "movie", [_case(1, [False, True, False])], reflect=False, history_len=5,
                        rank_tokens=40, memory_tokens=24, seed=0, temperature=1.0)[0]
    assert [v["cause"] for v in flat.versions] == ["init", "append", "append", "append"]
    assert flat.memory.description == "" and not flat.memory_samples and len(flat.rank_samples) == 3
