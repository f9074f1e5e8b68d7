"""TrackRec eq. 1-2 on fixed probabilities: rewards, chosen / rejected, ties and all-equal groups; the prompts."""

from __future__ import annotations

import numpy as np
import pytest

from reasonrec.methods import trackrec_steps as steps


def test_reward_is_p_yes_for_positives_and_p_no_for_negatives():
    p_yes = np.array([[0.9, 0.2, 0.5], [0.9, 0.2, 0.5]])
    r = steps.feedback_rewards(p_yes, np.array([1, 0]))
    np.testing.assert_allclose(r, [[0.9, 0.2, 0.5], [0.1, 0.8, 0.5]])   # eq. 1, no exp on probabilities


def test_best_cot_is_chosen_and_the_others_rejected():
    rewards = np.array([[0.1, 0.7, 0.3, 0.2]])
    prefs = steps.build_preferences(rewards, [["a", "b", "c", "d"]])
    (row,) = prefs.rows
    assert row["chosen"] == "b" and row["rejected"] == ["a", "c", "d"]
    assert row["rejected_rewards"] == [0.1, 0.3, 0.2]
    s = prefs.stats()
    assert s["kept"] == 1 and s["skipped_share"] == 0
    assert s["reward_chosen"] == pytest.approx(0.7) and s["reward_rejected"] == pytest.approx(0.2)


def test_all_equal_group_is_skipped_and_counted():
    rewards = np.array([[0.5, 0.5, 0.5], [0.6, 0.6 + 1e-9, 0.6], [0.2, 0.9, 0.4]])
    prefs = steps.build_preferences(rewards, [["a", "b", "c"]] * 3)
    assert [r["index"] for r in prefs.rows] == [2]
    assert prefs.skipped_all_equal == 2 and prefs.stats()["skipped_share"] == pytest.approx(2 / 3)


def test_ties_at_the_best_are_neither_chosen_twice_nor_rejected():
    rewards = np.array([[0.8, 0.3, 0.8, 0.1]])
    prefs = steps.build_preferences(rewards, [["a", "b", "c", "d"]])
    (row,) = prefs.rows
    assert row["chosen"] == "a"                 # the first of the tied best (sample order, seeded)
    assert row["rejected"] == ["b", "d"]        # "c" ties the chosen one: not a worse CoT
    assert prefs.tied_best == 1


def test_a_group_whose_others_all_tie_or_duplicate_is_skipped():
    prefs = steps.build_preferences(np.array([[0.9, 0.2, 0.9]]), [["x", "x", "y"]])
    # "y" ties the best, the other "x" is the chosen text itself: nothing is left to reject
    assert prefs.rows == [] and prefs.skipped_no_rejected == 1 and prefs.duplicate_texts == 1


def _fields():
    hist = [{"title": "Toy Story (1995)", "rating": 5}, {"title": "Heat (1995)", "rating": 2}]
    return {"history": hist, "target": {"title": "Fargo (1996)"}, "like_threshold": 3}


def test_prompts_follow_fig4_and_cot_prompt_never_shows_the_target():
    cot = steps.cot_prompt("movie", _fields())
    assert '["Toy Story (1995)", 5]' in cot and "RATING>3 means like" in cot and "within 200 words" in cot
    assert "Fargo" not in cot
    rec = steps.rec_prompt("movie", _fields(), "Likes animation.")
    assert '"Fargo (1996)"' in rec and "<summary>Likes animation.</summary>" in rec
    assert rec.endswith("Only output the result (Yes or No).")
    assert "<summary>" not in steps.rec_prompt("movie", _fields(), None)   # TALLRec / zero-shot prompt


def test_user_bootstrap_interval_covers_the_auc():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(40), 10)
    y = rng.integers(0, 2, 400)
    s = y * 0.3 + rng.random(400)
    from reasonrec.eval.metrics import auc

    lo, hi = steps.user_bootstrap_auc(users, y, s, n_boot=300)
    assert lo < auc(y, s) < hi and hi - lo < 0.2
