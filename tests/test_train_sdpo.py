"""Softmax-DPO trainer: equals trl's DPO loss with one rejected, log(1+K) at init, learns, resumes exactly."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from _lora import randomise_lora

from reasonrec.train.common import adapter_weights, stop_after_steps
from reasonrec.train.config import SDPOConfig
from reasonrec.train.sdpo import build_sdpo_trainer, train_sdpo

PAIRS = pd.DataFrame({
    "prompt": ["Which movie should the user watch next?", "Pick the next book.", "Recommend one album."],
    "chosen": ["Alien (1979)", "Dune", "Kind of Blue"],
    "rejected": [["Cars", "Up", "Heat"], ["Emma", "Ulysses", "Beloved"], ["Thriller", "Blue", "Low"]],
})


def _cfg(tiny, out, **training):
    return SDPOConfig.model_validate({
        "model": {"name": str(tiny), "lora": {"targets": "all-linear"}}, "data": {"train": "unused.jsonl"},
        "training": {"output_dir": str(out), "max_steps": 4, "learning_rate": 1e-2, "logging_steps": 1,
                     "save_steps": 2, "per_device_train_batch_size": 3, **training}})


@pytest.mark.parametrize(("chat", "share"), [(True, True), (True, False), (False, True)])
def test_one_rejected_equals_trl_dpo_sigmoid_loss(tiny_model_path, tmp_path, chat, share):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    df = PAIRS.assign(rejected=[r[0] for r in PAIRS["rejected"]])
    # fp32: two implementations agree to 1e-6 only in fp32 (bf16 rounding differs by ~4e-5)
    cfg = _cfg(tiny_model_path, tmp_path / "ours", per_device_train_batch_size=3, precision="fp32")
    cfg.chat_template = chat
    cfg.share_prompt = share
    ours, tok = build_sdpo_trainer(cfg, df)
    model = ours.model
    trl_data = [{"prompt": [{"role": "user", "content": p}] if chat else p,
                 "chosen": [{"role": "assistant", "content": c}] if chat else c,
                 "rejected": [{"role": "assistant", "content": r}] if chat else r}
                for p, c, r in zip(df["prompt"], df["chosen"], df["rejected"], strict=True)]
    trl = DPOTrainer(model=model, args=DPOConfig(output_dir=str(tmp_path / "trl"), beta=cfg.beta, report_to="none",
                                                 max_length=None, per_device_train_batch_size=3, bf16=False),
                     train_dataset=Dataset.from_list(trl_data), processing_class=tok)
    model = trl.model
    assert model is ours.model or ours.accelerator.unwrap_model(ours.model) is model
    randomise_lora(model)  # policy ≠ reference, so the loss is not just log 2
    model.eval()            # no LoRA dropout: both trainers see the same function
    trl_batch = trl.data_collator([trl.train_dataset[i] for i in range(3)])
    our_batch = ours.data_collator([ours.train_dataset[i] for i in range(3)])
    # same tokens: trl's rows are [chosen..., rejected...], as ours
    assert torch.equal(trl_batch["input_ids"], our_batch["input_ids"][:, : trl_batch["input_ids"].shape[1]])
    with torch.no_grad():
        trl_loss = trl.compute_loss(model, trl_batch)
        our_loss = ours.compute_loss(model, our_batch)
    assert abs(float(trl_loss) - math.log(2)) > 1e-3
    assert abs(float(trl_loss) - float(our_loss)) < 1e-6


def test_initial_loss_is_log_1_plus_k_then_training_lowers_it(tiny_model_path, tmp_path):
    result = train_sdpo(_cfg(tiny_model_path, tmp_path, max_steps=8, save_steps=100), PAIRS)
    losses = result.losses
    assert losses[0] == pytest.approx(math.log(1 + 3), abs=1e-5)  # fresh LoRA: policy == reference
    assert losses[-1] < losses[0] - 0.15
    acc = [h["rewards/accuracies"] for h in result.log_history if "rewards/accuracies" in h]
    assert acc[-1] == 1.0
    weights = adapter_weights(result.adapter_dir)
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # B starts at zero


def test_killed_and_resumed_run_ends_at_the_same_weights(tiny_model_path, tmp_path):
    full = train_sdpo(_cfg(tiny_model_path, tmp_path / "full", per_device_train_batch_size=2), PAIRS)
    part = _cfg(tiny_model_path, tmp_path / "part", per_device_train_batch_size=2)
    first = train_sdpo(part, PAIRS, callbacks=[stop_after_steps(2)])
    assert not first.adapter_dir.exists() and (tmp_path / "part" / "checkpoint-2").exists()
    train_sdpo(part, PAIRS)  # a new process would do exactly this: same config, resumes from checkpoint-2
    a, b = adapter_weights(full.adapter_dir), adapter_weights(tmp_path / "part" / "adapter")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert train_sdpo(part, PAIRS).skipped  # complete runs are not redone


def test_gradient_accumulation_matches_one_larger_batch(tiny_model_path, tmp_path):
    # compute_loss returns a per-prompt mean; the Trainer must divide it by the accumulation steps. Adam hides a
    # constant gradient scale in the weights, so compare the logged loss and the (pre-clipping) gradient norm.
    def first_log(out, bs, ga):
        cfg = _cfg(tiny_model_path, out, max_steps=1, per_device_train_batch_size=bs, gradient_accumulation_steps=ga)
        cfg.model.lora.dropout = 0.0
        return train_sdpo(cfg, PAIRS.head(2)).log_history[0]

    a, b = first_log(tmp_path / "b2", 2, 1), first_log(tmp_path / "b1ga2", 1, 2)
    assert a["grad_norm"] > 0
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)


def test_shared_prompt_refuses_gradient_checkpointing(tiny_model_path, tmp_path):
    # checkpointed layers drop the KV cache in training: the completions would silently lose their prompt
    cfg = _cfg(tiny_model_path, tmp_path).model_dump()
    cfg["model"]["gradient_checkpointing"] = True
    with pytest.raises(ValueError, match="share_prompt"):
        SDPOConfig.model_validate(cfg)
    SDPOConfig.model_validate({**cfg, "share_prompt": False})
