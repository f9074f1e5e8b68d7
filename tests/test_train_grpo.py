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
from reasonrec.train.grpo import build_grpo_trainer, train_grpo

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
