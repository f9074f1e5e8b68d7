"""The transformers backend against hand computations, and LoRA adapters by name (single and mixed batches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reasonrec.errors import BackendError, ConfigError
from reasonrec.llm.base import load_llm
from reasonrec.llm.hf import TransformersLLM, TransformersOptions

# Different lengths, so batches are padded.
PROMPTS = ["Hi", "Will the user like the target movie? Answer Yes or No.",
           [{"role": "system", "content": "You judge."}, {"role": "user", "content": "Is it reasonable?"}]]


@pytest.fixture(scope="module")
def llm(tiny_model_path):
    # float32: these compare batched, padded passes with unpadded ones to float32 rounding (bf16: test_llm_device)
    return TransformersLLM(str(tiny_model_path), TransformersOptions(batch_size=8, threads=1, dtype="float32"))


def _last_logits(llm, prompt):
    ids = torch.tensor([llm.encode_prompt(prompt)])
    with torch.no_grad():
        return llm.model(ids).logits[0, -1].float()


def test_choice_probs_match_manual_softmax(llm):
    probs = llm.choice_probs(PROMPTS, ("Yes", "No"))
    tok = llm.tokenizer
    for p, prompt in enumerate(PROMPTS):
        full = torch.softmax(_last_logits(llm, prompt), -1)
        mass = [sum(full[tok.encode(v, add_special_tokens=False)[0]].item() for v in (c, " " + c))
                for c in ("Yes", "No")]
        assert np.allclose(probs[p], np.array(mass) / sum(mass), atol=1e-5)


def test_sequence_logprob_matches_manual_computation(llm):
    completions = ["Yes, because the user likes comedies.", "No", "The preference is reasonable."]
    res = llm.sequence_logprob(PROMPTS, completions)
    for prompt, completion, r in zip(PROMPTS, completions, res, strict=True):
        p_ids = llm.encode_prompt(prompt)
        c_ids = llm.tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            logps = torch.log_softmax(llm.model(ids).logits[0].float(), -1)
        manual = [logps[len(p_ids) - 1 + t, tok].item() for t, tok in enumerate(c_ids)]
        assert np.allclose(r.token_logps, manual, atol=1e-4)
        assert np.isclose(r.total, sum(manual), atol=1e-3)


def test_multi_token_choice_is_product_of_token_probs(llm):
    probs = llm.choice_probs(PROMPTS[:1], ("Yes", "Not at all"))[0]
    mass = []
    for c in ("Yes", "Not at all"):
        mass.append(sum(np.exp(r.total) for r in llm.sequence_logprob(PROMPTS[:1] * 2, [c, " " + c])))
    assert np.allclose(probs, np.array(mass) / sum(mass), atol=1e-6)


def test_batched_generation_equals_one_at_a_time(tiny_model_path):
    batched = TransformersLLM(str(tiny_model_path), TransformersOptions(batch_size=8, threads=1))
    single = TransformersLLM(str(tiny_model_path), TransformersOptions(batch_size=1, threads=1))
    a = batched.generate(PROMPTS, max_new_tokens=8)
    b = single.generate(PROMPTS, max_new_tokens=8)
    assert [g.texts for g in a] == [g.texts for g in b]
    assert [g.completion_tokens for g in a] == [g.completion_tokens for g in b]


def test_options_are_validated():
    with pytest.raises(ConfigError, match="batch_size"):
        load_llm("tiny-random", batch_sise=4)
    with pytest.raises(BackendError, match="cannot load model"):
        load_llm("no-such-org/no-such-model")


# ------------------------------------------------------------------------------------------------ LoRA

def _save_adapter(base_path, out, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    # init_lora_weights=False: B is random, so the adapter is not a no-op (peft's own mixed-batch tests do this).
    cfg = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_llm(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    a = _save_adapter(tiny_model_path, root / "a", seed=1)
    b = _save_adapter(tiny_model_path, root / "b", seed=2)
    return load_llm(str(tiny_model_path), adapters={"a": str(a), "b": str(b)}, threads=1, dtype="float32")


def test_adapters_change_outputs(lora_llm, llm):
    base = lora_llm.choice_probs(PROMPTS, ("Yes", "No"))
    assert np.allclose(base, llm.choice_probs(PROMPTS, ("Yes", "No")), atol=1e-6)  # None = the base model
    pa = lora_llm.choice_probs(PROMPTS, ("Yes", "No"), adapter="a")
    pb = lora_llm.choice_probs(PROMPTS, ("Yes", "No"), adapter="b")
    assert not np.allclose(pa, base, atol=1e-4) and not np.allclose(pa, pb, atol=1e-4)
    la = lora_llm.sequence_logprob(PROMPTS[:1], ["Hello"], adapter="a")[0].total
    assert abs(la - lora_llm.sequence_logprob(PROMPTS[:1], ["Hello"])[0].total) > 1e-4


def test_mixed_adapter_batch_equals_per_adapter_calls(lora_llm):
    mix = [None, "a", "b"]
    probs = lora_llm.choice_probs(PROMPTS, ("Yes", "No"), adapter=mix)
    seq = lora_llm.sequence_logprob(PROMPTS, ["Yes", "No", "Maybe"], adapter=mix)
    gens = lora_llm.generate(PROMPTS, max_new_tokens=6, adapter=mix)
    for i, name in enumerate(mix):
        alone = lora_llm.choice_probs([PROMPTS[i]], ("Yes", "No"), adapter=name)[0]
        assert np.allclose(probs[i], alone, atol=1e-5)
        s = lora_llm.sequence_logprob([PROMPTS[i]], [["Yes", "No", "Maybe"][i]], adapter=name)[0]
        assert np.isclose(seq[i].total, s.total, atol=1e-4)
        assert gens[i].texts == lora_llm.generate([PROMPTS[i]], max_new_tokens=6, adapter=name)[0].texts


def test_adapter_ids_carry_weight_hashes(lora_llm):
    ida, idb = lora_llm.adapter_id("a"), lora_llm.adapter_id("b")
    assert ida.startswith("a@") and idb.startswith("b@") and ida.split("@")[1] != idb.split("@")[1]
    with pytest.raises(BackendError, match="unknown adapter"):
        lora_llm.adapter_id("c")


def test_sampling_is_seeded(llm):
    """The same call with the same seed samples the same texts (also after other calls); another seed differs."""
    kw = dict(n=3, temperature=1.0, top_p=0.9, max_new_tokens=6, seed=7)
    a = llm.generate(PROMPTS, **kw)
    assert all(len(g.texts) == 3 for g in a)
    assert len(set(a[0].texts)) > 1  # the n samples differ
    llm.generate(PROMPTS[:1], n=2, temperature=1.0, max_new_tokens=3, seed=1)
    assert [g.texts for g in a] == [g.texts for g in llm.generate(PROMPTS, **kw)]
    assert [g.texts for g in a] != [g.texts for g in llm.generate(PROMPTS, **dict(kw, seed=8))]


def test_top_p_keeps_only_the_nucleus(llm):
    """top_p → 0 leaves only the most likely token, so sampling equals greedy decoding."""
    greedy = llm.generate(PROMPTS, max_new_tokens=6)
    nucleus = llm.generate(PROMPTS, n=2, temperature=1.0, top_p=1e-6, max_new_tokens=6, seed=3)
    assert [[g.text] * 2 for g in greedy] == [g.texts for g in nucleus]


def test_stop_strings_end_generation_early(llm):
    free = llm.generate(PROMPTS, max_new_tokens=24)
    for g, f in zip(llm.generate(PROMPTS, max_new_tokens=24, stop=[" "]), free, strict=True):
        assert " " not in g.text and f.text.startswith(g.text)
        if " " in f.text:  # the stop string occurred, so generation ended before the token limit
            assert g.completion_tokens[0] < f.completion_tokens[0]
