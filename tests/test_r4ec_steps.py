"""R4ec's three LLM steps: every branch of Algorithm 1 and both §3.5 inference strategies.

A scripted teacher forces the branches a random tiny model would never reach (a well-formed answer with a
chosen verdict); the prompts are the real package templates, rendered from real fields.
"""

from __future__ import annotations

import re

import pytest

from reasonrec.llm.base import Generation, as_messages
from reasonrec.methods import r4ec_steps as steps

GEN = steps.GenArgs(max_new_tokens=32, max_attempts=2)


class Scripted:
    """An LLM whose answer depends on the case number found in the prompt (``Target-<n>`` or ``Hist-<n>``),
    the step (recognised from the prompt text) and the adapter. ``script[n][step]`` is the answer."""

    model_id = "scripted"
    supports = frozenset({"generate"})

    def __init__(self, script):
        self.script = script
        self.calls = []

    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=16, stop=None, seed=0, adapter=None):
        out = []
        adapters = adapter if isinstance(adapter, list) else [adapter] * len(prompts)
        for p, a in zip(prompts, adapters, strict=True):
            text = "\n".join(m["content"] for m in as_messages(p))
            case = int(re.search(r"(?:Target|Hist)-(\d+)", text).group(1))
            if "<Final Judgement>" in text:
                step = "reflect"
            elif "<Reflection>" in text:
                step = "refine"
            else:
                step = "reason"
            self.calls.append((case, step, a, seed))
            answer = self.script[case][step]
            out.append(Generation(texts=[answer(seed) if callable(answer) else answer]))
        return out


def reason(verdict: bool, tag="User Preference"):
    v = "user will like the target movie" if verdict else "user will not like the target movie"
    return f"<{tag}>Likes dramas.</{tag}>\n<Final Verdict>{v}</Final Verdict>"


def judge(ok: bool, side="user preference"):
    if ok:
        return f"<Final Judgement>The {side} is reasonable</Final Judgement>\n<Reflection></Reflection>"
    return f"<Final Judgement>The {side} is not reasonable</Final Judgement>\n<Reflection>Ignores comedies.</Reflection>"


def user_case(i, label):
    return {"key": f"u{i}", "label": label,
            "fields": {"history": [{"title": f"Hist-{i}", "rating": 5}], "like_threshold": 3,
                       "target": {"title": f"Target-{i}", "year": None, "categories": "", "description": ""}}}


def test_algorithm1_takes_every_branch():
    script = {
        0: {"reason": reason(True), "reflect": judge(True)},                                      # kept
        1: {"reason": reason(False), "reflect": judge(False), "refine": reason(True, "Refined User Preference")},
        2: {"reason": reason(False), "reflect": judge(False), "refine": reason(False, "Refined User Preference")},
        3: {"reason": reason(True), "reflect": judge(False)},                                     # discarded
        4: {"reason": reason(True), "reflect": judge(True)},                                      # label 0
        5: {"reason": "I cannot help with that."},                                                # malformed
    }
    teacher = Scripted(script)
    labels = [1, 1, 1, 1, 0, 1]
    built = steps.construct(teacher, "user", "movie", [user_case(i, y) for i, y in enumerate(labels)], GEN)
    assert dict(built.branches) == {"correct_reasonable": 1, "wrong_unreasonable": 2, "refined_correct": 1,
                                    "refined_wrong": 1, "correct_unreasonable": 1, "wrong_reasonable": 1,
                                    "reason_unparsed": 1}
    assert [r["key"] for r in built.reason] == ["u0"]
    assert [r["key"] for r in built.reflect] == ["u0", "u1"]
    assert [r["key"] for r in built.refine] == ["u1"]
    # the malformed answer was retried once (max_attempts=2), then counted
    assert [c for c in teacher.calls if c[0] == 5] == [(5, "reason", None, 0), (5, "reason", None, 1)]
    assert built.parse.failures == 1
    # Algorithm 1: the actor learns (hist) → u_pre — the target and the verdict never reach its data
    for row in built.reason + built.refine + built.reflect:
        assert "Target-" not in row["prompt"] and "Final Verdict" not in row["prompt"]
        assert "Hist-" in row["prompt"]
    assert built.reason[0]["completion"] == "<User Preference>Likes dramas.</User Preference>"
    positive, negative = built.reflect
    assert "is reasonable" in positive["completion"] and "<Reflection></Reflection>" in positive["completion"]
    assert "not reasonable" in negative["completion"] and "Ignores comedies." in negative["completion"]
    assert "Ignores comedies." in built.refine[0]["prompt"] and "Likes dramas." in built.refine[0]["prompt"]


def test_item_side_uses_target_user_only_for_construction():
    fields = {"target": {"title": "Target-0", "year": None, "categories": "Drama", "description": ""},
              "pos_histories": [["A", "B"]], "neg_histories": [["C"]], "like_threshold": 3,
              "target_history": [{"title": "Hist-0", "rating": 2}]}
    script = {0: {"reason": reason(False, "Item Fact"), "reflect": judge(True, "item fact")}}
    teacher = Scripted(script)
    built = steps.construct(teacher, "item", "movie", [{"key": "i0", "label": 0, "fields": fields}], GEN)
    assert built.branches["correct_reasonable"] == 1
    row = built.reason[0]
    assert "Target-0" in row["prompt"] and "Target User History" not in row["prompt"]
    assert row["completion"] == "<Item Fact>Likes dramas.</Item Fact>"


def entity(i):
    return {"history": [{"title": f"Hist-{i}", "rating": 4}], "like_threshold": 3, "target": {}}


def test_iterative_refinement_stops_when_judged_reasonable_or_out_of_steps():
    pref = "<User Preference>first</User Preference>"
    script = {
        0: {"reason": pref, "reflect": judge(True)},
        1: {"reason": pref, "reflect": judge(False), "refine": "<Refined User Preference>better</Refined User Preference>"},
    }
    llm = Scripted(script)
    res = steps.iterative_refinement(llm, "user", "movie", [entity(0), entity(1)], actor="a", reflector="r",
                                     max_steps=2, gen=GEN)
    assert res.first == ["first", "first"] and res.final == ["first", "better"]
    assert res.judged_unreasonable_first == 1
    # entity 1 is refined twice (the scripted reflector never approves) and then given up on
    assert res.refined == 2 and res.judged_unreasonable_final == 1
    assert {(c[2]) for c in llm.calls if c[1] == "reason"} == {"a"}
    assert {(c[2]) for c in llm.calls if c[1] == "reflect"} == {"r"}
    llm0 = Scripted(script)
    res0 = steps.iterative_refinement(llm0, "user", "movie", [entity(1)], actor="a", reflector="r",
                                      max_steps=0, gen=GEN)
    assert res0.final == ["first"] and not any(c[1] == "refine" for c in llm0.calls)


def test_reflection_filter_samples_k_and_keeps_the_reasonable_ones():
    def sampled(seed):
        return f"<User Preference>sample {seed}</User Preference>"

    def judge_by_sample(seed):  # the judge does not see the seed of the sample; alternate by call order
        judge_by_sample.n += 1
        return judge(judge_by_sample.n % 2 == 1)

    judge_by_sample.n = 0
    llm = Scripted({0: {"reason": sampled, "reflect": judge_by_sample}})
    res = steps.reflection_filter(llm, "user", "movie", [entity(0)], actor="a", reflector="r", k=3,
                                  temperature=0.8, gen=GEN)
    assert len(res.samples[0]) == 3 and len(set(res.samples[0])) == 3  # a distinct seed per sample
    assert res.keep == [[True, False, True]]
    assert res.kept_fraction == pytest.approx(2 / 3)


class Primed(Scripted):
    """Answers as a primed model does: the prompt ends with the assistant's opening tag, which the answer
    continues (so the answer itself lacks it)."""

    def generate(self, prompts, **kwargs):
        prefixes = []
        for p in prompts:
            assert p[-1]["role"] == "assistant", "a primed prompt ends with the response prefix"
            prefixes.append(p[-1]["content"])
        out = super().generate([p[:-1] for p in prompts], **kwargs)
        for prefix, g in zip(prefixes, out, strict=True):
            assert g.texts[0].startswith(prefix), (prefix, g.texts[0])
            g.texts[0] = g.texts[0][len(prefix):]
        return out


def test_priming_starts_each_answer_with_its_tag():
    script = {
        0: {"reason": reason(True), "reflect": judge(True)},
        1: {"reason": reason(False), "reflect": judge(False), "refine": reason(True, "Refined User Preference")},
    }
    primed = steps.GenArgs(max_new_tokens=32, max_attempts=1, prime=True)
    built = steps.construct(Primed(script), "user", "movie", [user_case(0, 1), user_case(1, 1)], primed)
    assert dict(+built.branches) == {"correct_reasonable": 1, "wrong_unreasonable": 1, "refined_correct": 1}
    # the SFT targets keep the full tagged answer: an actor trained on them writes the tag, primed or not
    assert built.reason[0]["completion"].startswith("<User Preference>Likes dramas.")
    assert built.refine[0]["completion"].startswith("<Refined User Preference>")


def test_transformers_format_continues_a_response_prefix(tiny_model_path):
    from reasonrec.llm.hf import TransformersLLM

    llm = TransformersLLM(str(tiny_model_path))
    chat = [{"role": "user", "content": "Summarise."}]
    plain = llm.format(chat)
    primed = llm.format([*chat, {"role": "assistant", "content": "<User Preference>"}])
    assert primed == plain + "<User Preference>"  # the generation prompt, then the prefix; no closed turn
    g = llm.generate([[*chat, {"role": "assistant", "content": "<User Preference>"}]], max_new_tokens=4)[0]
    assert g.completion_tokens[0] <= 4 and not g.text.startswith("<User Preference>")


def test_unparsed_judgement_is_retried_counted_and_never_reasonable():
    pref = "<User Preference>first</User Preference>"
    llm = Scripted({0: {"reason": pref, "reflect": "I think it is fine."},  # never a judgement
                    1: {"reason": pref, "reflect": judge(True)}})
    res = steps.iterative_refinement(llm, "user", "movie", [entity(0), entity(1)], actor="a", reflector="r",
                                     max_steps=1, gen=GEN)
    # retried like any malformed answer (max_attempts=2), then counted apart — not as reasonable
    assert [c[1] for c in llm.calls if c[0] == 0] == ["reason", "reflect", "reflect"]
    assert res.judge_unparsed_first == 1 and res.judge_unparsed_final == 1
    assert res.judged_unreasonable_first == 0 and res.final == ["first", "first"]
    filt = steps.reflection_filter(Scripted({0: {"reason": pref, "reflect": "?"}}), "user", "movie", [entity(0)],
                                   actor="a", reflector="r", k=2, temperature=0.8, gen=GEN)
    assert filt.keep == [[False, False]] and filt.judge_unparsed == 2


def test_each_variant_asks_the_model_the_paper_says():
    """kar: the un-tuned model (no adapter), one answer, no reflection; r2ec: the D_reason actor, one answer, no
    reflection; r4ec_refine / r4ec_filter: the actor with the reflector."""
    from reasonrec.methods.r4ec import GenerationSection, infer_side

    def by_adapter(seed):
        return f"<User Preference>seed {seed}</User Preference>"

    llm = Scripted({0: {"reason": by_adapter, "reflect": judge(False),
                        "refine": "<Refined User Preference>better</Refined User Preference>"}})
    adapters = {"user_actor": "x", "user_reflect": "y", "user_r2ec": "z"}
    texts, stats = infer_side(llm, "user", "movie", [entity(0)], adapters,
                              GenerationSection(max_refine_steps=1, filter_k=2), GEN)
    asked = {}
    for _, step, adapter, _ in llm.calls:
        asked.setdefault(adapter, set()).add(step)
    assert asked == {None: {"reason"}, "user_r2ec": {"reason"}, "user_actor": {"reason", "refine"},
                     "user_reflect": {"reflect"}}
    assert texts["kar"] == ["seed 0"] and texts["r2ec"] == ["seed 0"] and texts["r4ec_refine"] == ["better"]
    assert len(texts["filter_samples"][0]) == 2
    assert stats["adapters"] == {"kar": None, "r2ec": "user_r2ec", "actor": "user_actor",
                                 "reflector": "user_reflect"}
    assert stats["unreasonable_before"] == 1.0


def test_filter_pools_parsed_samples_only_and_falls_back_to_the_refined_answer():
    import numpy as np

    from reasonrec.methods.r4ec import filter_pool

    emb = np.array([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]],    # keeps sample 0
                    [[1.0, 0.0], [0.0, 3.0], [7.0, 7.0]],    # none kept: mean of the two parsed ones
                    [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]]])   # none parsed: the refined answer
    keep = np.array([[True, False, False], [False, False, False], [False, False, False]])
    parsed = np.array([[True, True, False], [True, True, False], [False, False, False]])
    fallback = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, -2.0]])
    pooled, counts = filter_pool(emb, keep, parsed, fallback)
    assert pooled.tolist() == [[1.0, 0.0], [0.5, 1.5], [2.0, -2.0]]
    assert counts == {"none_kept": 1, "none_parsed_fallback_refined": 1}
