"""bf16 selection: native bf16 → bf16, otherwise fp32; explicit requests honoured; every choice recorded."""

from __future__ import annotations

import pytest
import torch

from reasonrec.errors import ConfigError
from reasonrec.llm import device
from reasonrec.llm.hf import TransformersLLM, TransformersOptions


def test_auto_follows_the_cpu_features(monkeypatch):
    cases = [(True, False, "bfloat16", "AMX"), (False, True, "bfloat16", "AVX512-BF16"),
             (False, False, "float32", "neither")]
    for amx, avx, expect, why in cases:
        monkeypatch.setattr(device, "cpu_features",
                            lambda amx=amx, avx=avx: {"amx": amx, "avx512_bf16": avx, "capability": "AVX2",
                                                      "flags": []})
        choice = device.resolve_dtype("auto", "cpu", where=f"test:{amx}:{avx}")
        assert choice.dtype == expect
        assert why in choice.reason
    assert device.resolve_dtype("float32", "cpu").reason == "requested"
    assert device.resolve_dtype("bfloat16", "cpu").dtype == "bfloat16"
    with pytest.raises(ConfigError, match="dtype.*'half'"):
        device.resolve_dtype("half", "cpu")


def test_this_machine_is_detected_as_torch_sees_it():
    feats = device.cpu_features()
    native = bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    assert device.native_bf16("cpu")[0] == native == (feats["amx"] or feats["avx512_bf16"])


def test_backend_uses_and_records_the_choice(tiny_model_path):
    llm = TransformersLLM(str(tiny_model_path), TransformersOptions(dtype="auto"))
    want = device.resolve_dtype("auto", "cpu").dtype
    assert next(llm.model.parameters()).dtype == getattr(torch, want)
    assert llm.model_id.endswith(f":{want}")  # the generation cache keys on it: bf16 texts never mix with fp32
    manifest = device.dtype_manifest()
    assert set(manifest["cpu"]) == {"amx", "avx512_bf16", "capability"}
    assert any(c["where"] == f"transformers:{tiny_model_path}" and c["dtype"] == want for c in manifest["choices"])
    # scores stay float32 and normalised in bf16
    probs = llm.choice_probs(["Do you like Alien?"], ("Yes", "No"))
    assert probs.shape == (1, 2) and abs(probs.sum() - 1) < 1e-6


def test_bf16_mixed_adapter_batch_matches_per_adapter_calls(tiny_model_path, tmp_path):
    """Per-row LoRA adapters stay exact enough in bf16: padding and row mixing move probabilities by < 1e-3 and
    sequence log-probs by < 1e-2 nats (measured 4e-5 and 3e-4), and greedy texts do not change."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reasonrec.llm.base import load_llm

    paths = {}
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
        cfg = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(model, cfg).save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    llm = load_llm(str(tiny_model_path), adapters=paths, threads=1, dtype="bfloat16")
    prompts = ["Hi", "Will the user like the target movie? Answer Yes or No.", "Is it reasonable?"]
    mix = [None, "a", "b"]
    probs = llm.choice_probs(prompts, ("Yes", "No"), adapter=mix)
    seq = llm.sequence_logprob(prompts, ["Yes", "No", "Maybe"], adapter=mix)
    gens = llm.generate(prompts, max_new_tokens=6, adapter=mix)
    for i, name in enumerate(mix):
        assert abs(probs[i] - llm.choice_probs([prompts[i]], ("Yes", "No"), adapter=name)[0]).max() < 1e-3
        alone = llm.sequence_logprob([prompts[i]], [["Yes", "No", "Maybe"][i]], adapter=name)[0]
        assert abs(seq[i].total - alone.total) < 1e-2
        assert gens[i].texts == llm.generate([prompts[i]], max_new_tokens=6, adapter=name)[0].texts
