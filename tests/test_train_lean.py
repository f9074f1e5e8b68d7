"""Lean training steps and bf16: the head on completion positions only gives the plain path's loss and gradients;
bf16 weights keep fp32 LoRA master weights; a 20-step bf16 SFT loss curve stays near fp32's."""

from __future__ import annotations

import pandas as pd
import torch
from _lora import randomise_lora

from reasonrec.llm import device
from reasonrec.train.common import precision_plan
from reasonrec.train.config import SDPOConfig, SFTConfig
from reasonrec.train.lean import lean_lm_loss, lean_token_logps, selected_logps
from reasonrec.train.sdpo import build_sdpo_trainer
from reasonrec.train.sft import build_sft_trainer

PAIRS = pd.DataFrame({
    "prompt": ["Do you like Alien?", "Do you like Emma? " + "It is a long prompt about a novel. " * 6,
               "Rate Heat.", "Rate Dune."],
    "completion": ["Yes, I do.", "No.", "Five stars, a great heist film.", "Two stars."],
})


def _sft_cfg(tiny, out, **training):
    return SFTConfig.model_validate({
        "model": {"name": str(tiny), "lora": {"targets": "all-linear", "dropout": 0.0}},
        "data": {"train": "unused.jsonl"},
        "training": {"output_dir": str(out), "max_steps": 20, "learning_rate": 2e-2, "logging_steps": 1,
                     "save_steps": 1000, "per_device_train_batch_size": 4, "precision": "fp32", **training}})


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_selected_logps_equal_log_softmax_in_every_chunking():
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(13, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (13,), generator=g)
    want = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None])[:, 0]
    (gw,) = torch.autograd.grad(want.sum(), hidden)
    for chunk in (1, 4, 13, 100):
        got, hits = selected_logps(hidden, head, targets, chunk)
        (gg,) = torch.autograd.grad(got.sum(), hidden)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gg, gw, rtol=1e-5, atol=1e-6)
        assert torch.equal(hits, head(hidden).argmax(-1) == targets)


def test_lean_sft_loss_and_gradients_equal_the_plain_forward(tiny_model_path, tmp_path):
    """Tolerance: loss to 1e-6 relative, every LoRA gradient to 1e-4 of its largest entry (fp32 rounding of a
    different summation order; measured 4e-6)."""
    trainer, _ = build_sft_trainer(_sft_cfg(tiny_model_path, tmp_path), PAIRS)
    assert type(trainer).__name__ == "LeanSFTTrainer"
    model = trainer.model
    randomise_lora(model)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    plain = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    g_plain = _grads(model, plain)
    lean, stats = lean_lm_loss(model, ids, mask, labels, chunk=7)  # several chunks
    g_lean = _grads(model, lean)
    assert int(stats["n_tokens"]) == int((labels[:, 1:] != -100).sum()) > 20
    torch.testing.assert_close(lean, plain, rtol=1e-6, atol=0)
    assert g_plain.keys() == g_lean.keys() and any("lora_A" in n for n in g_plain)
    for n in g_plain:
        scale = g_plain[n].abs().max()
        assert (g_lean[n] - g_plain[n]).abs().max() <= 1e-4 * scale, n
    # num_items_in_batch (gradient accumulation): a sum over the micro-batch divided by the global count
    summed, _ = lean_lm_loss(model, ids, mask, labels, num_items_in_batch=2 * stats["n_tokens"])
    torch.testing.assert_close(summed, plain / 2, rtol=1e-6, atol=0)


def test_lean_sdpo_row_logps_equal_trls_fused_head(tiny_model_path, tmp_path):
    data = pd.DataFrame({"prompt": ["Which movie next?", "Pick the next book, the user likes long novels."],
                         "chosen": ["Alien (1979)", "Dune"], "rejected": [["Cars", "Up"], ["Emma", "Beloved"]]})
    cfg = SDPOConfig.model_validate({
        "model": {"name": str(tiny_model_path), "lora": {"targets": "all-linear", "dropout": 0.0}},
        "data": {"train": "unused.jsonl"}, "share_prompt": False,
        "training": {"output_dir": str(tmp_path), "max_steps": 1, "precision": "fp32",
                     "per_device_train_batch_size": 2}})
    trainer, _ = build_sdpo_trainer(cfg, data)
    randomise_lora(trainer.model)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert trainer.lean
    lean = trainer._row_logps(trainer.model, batch)
    trainer.lean = False
    fused = trainer._row_logps(trainer.model, batch)
    torch.testing.assert_close(lean, fused, rtol=1e-5, atol=1e-5)


def test_bf16_weights_keep_fp32_lora_master_weights(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setattr(device, "cpu_features",
                        lambda: {"amx": False, "avx512_bf16": False, "capability": "AVX2", "flags": []})
    cfg = _sft_cfg(tiny_model_path, tmp_path, precision="auto")
    assert precision_plan(cfg.training).weights_dtype == "float32"  # no native bf16: fp32, no autocast
    assert not precision_plan(cfg.training).bf16
    monkeypatch.setattr(device, "cpu_features",
                        lambda: {"amx": False, "avx512_bf16": True, "capability": "AVX512", "flags": []})
    plan = precision_plan(cfg.training)
    assert (plan.weights_dtype, plan.bf16, plan.choice.reason) == ("bfloat16", False, "CPU has AVX512-BF16")
    auto = precision_plan(_sft_cfg(tiny_model_path, tmp_path, precision="bf16", bf16_mode="autocast").training)
    assert (auto.weights_dtype, auto.bf16) == ("float32", True)
    trainer, _ = build_sft_trainer(cfg, PAIRS)
    dtypes = {n: p.dtype for n, p in trainer.model.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.args.max_steps = 2
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(before[n], after[n].detach()) for n in before if "lora_B" in n)
    assert any(c.where == "train:sft" and c.dtype == "bfloat16" for c in device._CHOICES)


def test_bf16_sft_loss_curve_follows_fp32(tiny_model_path, tmp_path):
    """20 steps of SFT from the same init, bf16 weights (the default bf16 mode) vs fp32: the loss stays within 3 %
    (relative) of fp32's at every step. Measured on the random tiny model at lr 2e-2: equal to 1e-3 for 6 steps,
    then bf16 learns a little slower (max 2.6 % apart, at step 20: 10.33 vs 10.07), the residual stream being
    rounded to bf16. (bf16 autocast is not compared here: accelerate keeps one mixed-precision state per process,
    so after an fp32 trainer a second trainer in the same process silently runs fp32.)"""
    curves = {}
    for name, precision in (("fp32", "fp32"), ("bf16", "bf16")):
        cfg = _sft_cfg(tiny_model_path, tmp_path / name, precision=precision, bf16_mode="weights")
        trainer, _ = build_sft_trainer(cfg, PAIRS)
        trainer.train()
        curves[name] = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert len(fp32) == len(bf16) == 20 and fp32[-1] < fp32[0] - 0.5 and bf16[-1] < bf16[0] - 0.3  # both learn
    assert max(abs(a - b) / a for a, b in zip(fp32, bf16, strict=True)) < 0.03, (fp32, bf16)
    assert fp32 != bf16  # bf16 really ran


def test_lean_logps_are_zero_outside_the_scored_tokens(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    labels = torch.tensor([[-100, -100, -100, 4, 5, -100]])
    logps, keep, _ = lean_token_logps(model, ids, None, labels)
    assert keep.tolist() == [[False, False, True, True, False]]
    full = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    torch.testing.assert_close(logps[0, 2:4], full[[2, 3], [4, 5]], rtol=1e-5, atol=1e-5)
    assert logps[0, [0, 1, 4]].abs().sum() == 0


def test_lean_grpo_logps_and_entropies_equal_trls(tiny_model_path, tmp_path):
    from trl import GRPOTrainer

    from reasonrec.train.config import GRPOConfig
    from reasonrec.train.grpo import build_grpo_trainer

    cfg = GRPOConfig.model_validate({
        "model": {"name": str(tiny_model_path), "lora": {"targets": "all-linear", "dropout": 0.0}},
        "data": {"train": "unused.jsonl"}, "reward": "yes", "num_generations": 2, "temperature": 0.7,
        "training": {"output_dir": str(tmp_path), "max_steps": 1, "precision": "fp32",
                     "per_device_train_batch_size": 2}})
    trainer, _ = build_grpo_trainer(cfg, pd.DataFrame({"prompt": ["Say yes.", "Say no, please."]}))
    assert type(trainer).__name__ == "LeanGRPOTrainer"
    randomise_lora(trainer.model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0   # a left-padded prompt
    mask[1, -2:] = 0  # a completion that ended early
    got = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 5, batch_size=2,
                                                     compute_entropy=True)
    want = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, mask, 5, batch_size=2,
                                                          compute_entropy=True)
    keep = mask[:, -5:].bool()
    torch.testing.assert_close(got[0][keep], want[0][keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1][keep], want[1][keep], rtol=1e-5, atol=1e-5)
