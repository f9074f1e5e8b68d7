"""GRPO (trl GRPOTrainer) with plain reward functions: a learnable reward goes up; runs resume exactly.

The smallest honest setup on the random tiny model: its next-token distribution is almost uniform over 49k tokens,
so "Yes" would never be sampled. The rollouts are therefore constrained to the two answer tokens (``suppress_tokens``
in ``generation_kwargs``, one new token) — a Yes/No classification policy — and GRPO must raise P(Yes) from ≈ 0.5.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from reasonrec.train.common import adapter_weights, stop_after_steps
from reasonrec.train.config import GRPOConfig
from reasonrec.train.grpo import build_grpo_trainer, rank_reward, target_rank, train_grpo

PROMPTS = pd.DataFrame({"prompt": [f"Question {i}: will the user like item {i}? Answer Yes or No." for i in range(4)]})


def _cfg(tiny, out, tok, **training):
    allowed = {tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")}
    return GRPOConfig.model_validate({
        "reward": "yes", "num_generations": 8, "max_completion_length": 1,
        "generation_kwargs": {"suppress_tokens": [i for i in range(len(tok)) if i not in allowed]},
        "model": {"name": str(tiny), "lora": {"targets": "all-linear"}}, "data": {"train": "unused.jsonl"},
        "training": {"output_dir": str(out), "max_steps": 16, "learning_rate": 5e-2, "logging_steps": 1,
                     "save_steps": 100, "per_device_train_batch_size": 8, **training}})


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def _p_yes(trainer, tok) -> float:
    """Mean P(Yes | {Yes, No}) at the first answer position over the prompts (chat template applied)."""
    model = trainer.model
    model.eval()
    yes, no = tok.convert_tokens_to_ids("Yes"), tok.convert_tokens_to_ids("No")
    ps = []
    for p in PROMPTS["prompt"]:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_dict=True, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        ps.append(float(torch.sigmoid(logits[yes] - logits[no])))
    model.train()
    return sum(ps) / len(ps)


def test_grpo_raises_the_yes_reward(tiny_model_path, tmp_path, tok):
    trainer, _ = build_grpo_trainer(_cfg(tiny_model_path, tmp_path, tok), PROMPTS)
    before = _p_yes(trainer, tok)
    trainer.train()
    after = _p_yes(trainer, tok)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert after > before + 0.15, (before, after)
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4, rewards


def test_killed_and_resumed_run_ends_at_the_same_weights(tiny_model_path, tmp_path, tok):
    full = train_grpo(_cfg(tiny_model_path, tmp_path / "full", tok, max_steps=4, save_steps=2), PROMPTS)
    part = _cfg(tiny_model_path, tmp_path / "part", tok, max_steps=4, save_steps=2)
    train_grpo(part, PROMPTS, callbacks=[stop_after_steps(2)])
    resumed = train_grpo(part, PROMPTS)
    a, b = adapter_weights(full.adapter_dir), adapter_weights(resumed.adapter_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------- rank reward

CANDS = [f"Movie {c} (199{i % 10})" for i, c in enumerate("ABCDEFGHIJKLMNOPQRST")]


def _listing(titles):
    return "\n".join(f"{i}. {t} - fits the profile" for i, t in enumerate(titles, start=1))


def test_rank_reward_strips_the_think_block():
    """Numbered lines inside <think> are the model's scratch work, not its ranking: the target ranked first after
    a two-line think block has rank 1 (the old substring parser gave it rank 3)."""
    text = f"<think>\n1. {CANDS[5]} maybe\n2. {CANDS[6]} hmm\n</think>\n" + _listing([CANDS[0], CANDS[5], CANDS[6]])
    assert target_rank(text, CANDS[0], CANDS) == 1
    assert rank_reward([text], target_title=[CANDS[0]], candidates=[CANDS]) == [1.0]
    # and a target named only inside the think block is unranked
    assert target_rank(text, CANDS[9], CANDS) is None


def test_one_line_listing_every_title_is_not_rank_1_for_every_target():
    """The reward hack: "1. A, B, C, ..." names every title on one line. It counts as one candidate (the longest
    title on it), so at most one target can get rank 1 from it; every other target is unranked (−1)."""
    text = "1. " + ", ".join(CANDS)
    rewards = rank_reward([text] * len(CANDS), target_title=CANDS, candidates=[CANDS] * len(CANDS))
    assert rewards.count(1.0) <= 1 and rewards.count(-1.0) >= len(CANDS) - 1, rewards
    honest = rank_reward([_listing(CANDS)] * len(CANDS), target_title=CANDS, candidates=[CANDS] * len(CANDS))
    assert sum(honest) > sum(rewards)


def test_duplicates_and_missing_items_in_the_reward():
    # a duplicate line is dropped: the next new title moves up, as evaluation ranks it
    dup = _listing([CANDS[1], CANDS[1], CANDS[1], CANDS[2]])
    assert target_rank(dup, CANDS[2], CANDS) == 2
    # items the model left out are not ranked by it (evaluation appends them; the reward must not)
    short = _listing([CANDS[3], CANDS[4]])
    assert target_rank(short, CANDS[19], CANDS) is None
    assert rank_reward([short], target_title=[CANDS[19]], candidates=[CANDS]) == [-1.0]
    # a fuzzy variant of a title still counts (year dropped, case changed), a target outside the list does not
    assert target_rank("1. movie e\n2. Movie A (1990)", CANDS[0], CANDS) == 2
    assert target_rank(_listing(CANDS), "Not A Candidate (2001)", CANDS) is None


def test_rank_reward_leaves_other_tasks_to_their_reward():
    out = rank_reward([_listing(CANDS)] * 2, target_title=[CANDS[0]] * 2, candidates=[CANDS] * 2,
                      task=["rank", "memory"])
    assert out == [1.0, None]


# ---------------------------------------------------------------------------------------------- constrained rollouts

def test_constrained_rollouts_are_rankings_whose_rewards_differ(tiny_model_path, tmp_path):
    """Unconstrained, a small policy's rollouts name no candidate (every reward −1, zero advantage). Under the
    ranking constraint even the random tiny model writes a permutation of the candidates, so the target's rank —
    and the reward — varies within a group, and GRPO has an advantage to follow."""
    from reasonrec.llm.specs import task_spec
    from reasonrec.train.grpo import make_rank_reward

    titles = CANDS[:5]
    df = pd.DataFrame({"prompt": [f"Rank these movies for user {u}: " + "; ".join(titles) for u in range(2)],
                       "target_title": [titles[1], titles[3]], "candidates": [titles, titles]})
    seen: list[tuple[str, float]] = []
    reward = make_rank_reward("target_title", "candidates")

    def recording_reward(completions, **kw):
        out = reward(completions, **kw)
        seen.extend(zip(completions, out, strict=True))
        return out

    cons = task_spec("starec_rank", candidates=dict(enumerate(titles)), max_new_tokens=160).constraint
    cfg = GRPOConfig.model_validate({
        "reward": "rank", "num_generations": 4, "max_completion_length": 160, "temperature": 1.0,
        "model": {"name": str(tiny_model_path), "lora": {"targets": "all-linear"}}, "data": {"train": "unused.jsonl"},
        "training": {"output_dir": str(tmp_path), "max_steps": 2, "learning_rate": 1e-3, "logging_steps": 1,
                     "save_steps": 100, "per_device_train_batch_size": 4}})
    trainer, _ = build_grpo_trainer(cfg, df, [recording_reward], constraint_for=lambda row: cons)
    trainer.train()
    assert len(seen) == 8
    for text, r in seen:
        text = text if isinstance(text, str) else text[0]["content"]
        assert target_rank(text, titles[0], titles) is not None, text   # every candidate named: a full ranking
        assert r > -1.0, text
    assert len({r for _, r in seen}) > 1, seen


def test_constrained_rollouts_refuse_top_p(tiny_model_path, tmp_path):
    from reasonrec.errors import ConfigError

    cfg = GRPOConfig.model_validate({
        "reward": "rank", "num_generations": 2, "generation_kwargs": {"top_p": 0.9},
        "model": {"name": str(tiny_model_path)}, "data": {"train": "unused.jsonl"},
        "training": {"output_dir": str(tmp_path), "max_steps": 1, "per_device_train_batch_size": 2}})
    df = pd.DataFrame({"prompt": ["p"], "target_title": ["A"], "candidates": [["A", "B"]]})
    with pytest.raises(ConfigError, match="top_p"):
        build_grpo_trainer(cfg, df, constraint_for=lambda row: None)
