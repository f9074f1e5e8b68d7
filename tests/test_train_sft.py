"""LoRA SFT (trl SFTTrainer): completion-only loss with the chat template, learns, resumes exactly."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from reasonrec.errors import ConfigError, DataError
from reasonrec.train.common import adapter_weights, read_table, stop_after_steps
from reasonrec.train.config import SFTConfig
from reasonrec.train.sft import build_sft_trainer, train_sft

PAIRS = pd.DataFrame({
    "prompt": ["Do you like Alien?", "Do you like Emma?", "Rate Heat.", "Rate Dune."],
    "completion": ["Yes, I do.", "No.", "Five stars.", "Two stars."],
})


def _cfg(tiny, out, **training):
    return SFTConfig.model_validate({
        "model": {"name": str(tiny), "lora": {"targets": "all-linear"}}, "data": {"train": "unused.jsonl"},
        "training": {"output_dir": str(out), "max_steps": 4, "learning_rate": 2e-2, "logging_steps": 1,
                     "save_steps": 2, "per_device_train_batch_size": 4, **training}})


def _dataset_loss(trainer) -> float:
    trainer.model.eval()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    with torch.no_grad():
        return float(trainer.model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                                                 "labels")}).loss)


def test_loss_is_on_the_completion_only_with_the_chat_template(tiny_model_path, tmp_path):
    trainer, tok = build_sft_trainer(_cfg(tiny_model_path, tmp_path), PAIRS)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>") and "<|im_start|>assistant\nYes, I do.<|im_end|>" in text
    trained = tok.decode(ids[labels != -100])
    assert trained.startswith("Yes, I do.") and "Do you like" not in trained


def test_overfitting_lowers_the_loss_and_changes_only_lora(tiny_model_path, tmp_path):
    trainer, _ = build_sft_trainer(_cfg(tiny_model_path, tmp_path, max_steps=10, save_steps=100), PAIRS)
    before_loss = _dataset_loss(trainer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after_loss = _dataset_loss(trainer)
    assert after_loss < before_loss - 0.3
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)


def test_killed_and_resumed_run_ends_at_the_same_weights(tiny_model_path, tmp_path):
    data = pd.concat([PAIRS] * 2, ignore_index=True)
    full = train_sft(_cfg(tiny_model_path, tmp_path / "full", per_device_train_batch_size=2), data)
    part = _cfg(tiny_model_path, tmp_path / "part", per_device_train_batch_size=2)
    assert not train_sft(part, data, callbacks=[stop_after_steps(2)]).adapter_dir.exists()
    resumed = train_sft(part, data)
    a, b = adapter_weights(full.adapter_dir), adapter_weights(resumed.adapter_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert (tmp_path / "part" / "train_log.json").exists()


def test_bad_inputs_raise_clear_errors(tiny_model_path, tmp_path):
    path = tmp_path / "d.jsonl"
    PAIRS.rename(columns={"completion": "answer"}).to_json(path, orient="records", lines=True)
    with pytest.raises(DataError, match="missing column.*completion"):
        read_table(path, ["prompt", "completion"])
    with pytest.raises(ConfigError, match="cannot load"):
        train_sft(SFTConfig.model_validate({"model": {"name": str(tmp_path / "nope")}, "data": {"train": str(path)},
                                            "training": {"output_dir": str(tmp_path / "o")}}), PAIRS)


@pytest.mark.slow
def test_smollm2_adapter_trains_saves_and_loads_by_folder(tmp_path):
    """Real bundled model: a few SFT steps, then the saved folder loads with plain peft and changes the output."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonrec.llm.bundled import smollm2_hf_dir

    cfg = SFTConfig.model_validate({
        "model": {"name": "smollm2-135m"}, "data": {"train": "unused.jsonl"},
        "training": {"output_dir": str(tmp_path), "max_steps": 4, "learning_rate": 1e-3, "logging_steps": 1,
                     "save_steps": 100, "per_device_train_batch_size": 2}})
    result = train_sft(cfg, PAIRS.head(2))  # one batch, seen at every step: its loss must fall
    assert result.losses[-1] < result.losses[0]
    tok = AutoTokenizer.from_pretrained(result.adapter_dir)
    ids = tok("Do you like Alien?", return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir())
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(result.adapter_dir))
        after = tuned(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-4
