"""The three LLM steps of R4ec (RecSys '25) — reason, reflect, refine — for both knowledge sides.

- :func:`construct` is Algorithm 1 (user preference, §3.2) and its item twin (§3.3): a teacher reasons (with a
  verdict on the target), reflects on its own answer, and refines the answers it judged unreasonable; the
  branches decide which (input, output) pairs become the reasoning, reflection and refinement sets.
- :func:`iterative_refinement` and :func:`reflection_filter` are the two inference strategies of §3.5, run with
  the trained actor and reflection adapters; :func:`single_answer` is the System-1 answer of the ``kar`` (un-tuned
  model) and ``r2ec`` (actor trained on D_reason only) rows.

Prompts are the package templates ``r4ec_{side}_{reason,reflect,refine}``. Rendered *with* a ``target`` (and the
target user's history on the item side) they are the construction prompts of Fig. 3, which ask for a verdict;
rendered with ``target=None`` they are the actor's and reflection model's inputs, which per Algorithm 1 see only
(hist) / (hist, u_pre) / (hist, u_pre, reflect) — the supervision signal must not leak into the knowledge.
Every step is batched over all entities and goes through :func:`~reasonrec.llm.parsers.generate_parsed`, so a
malformed answer is retried, then counted, never fatal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..llm.parsers import ParseStats, generate_parsed, parse_judgement, parse_reasoned
from ..llm.prompts import render

Side = Literal["user", "item"]
# The field each side's templates read the knowledge from, and the output tags of the actor.
KNOWLEDGE_FIELD = {"user": "preference", "item": "item_fact"}
REASON_TAG = {"user": "User Preference", "item": "Item Fact"}
REFINE_TAG = {"user": "Refined User Preference", "item": "Refined Item Fact"}
# Fields only the construction prompts carry: the supervision the actor must not see (Algorithm 1 trains the
# actor on (hist) → u_pre and the item actor on (item, pos, neg) → i_fact).
CONSTRUCTION_ONLY = {"user": "target", "item": "target_history"}
REASONABLE = {"user": "The user preference is reasonable", "item": "The item fact is reasonable"}
UNREASONABLE = {"user": "The user preference is not reasonable", "item": "The item fact is not reasonable"}


@dataclass
class GenArgs:
    """Generation settings shared by the steps (see ``R4ecConfig.generation``)."""

    max_new_tokens: int = 160
    temperature: float = 0.0
    max_attempts: int = 2
    seed: int = 0
    prime: bool = False
    constrain: bool = False  # constrain decoding to each step's answer format (reasonrec.llm.specs)
    domain: str = "movie"

    def kwargs(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "seed": self.seed,
                "max_attempts": self.max_attempts}


def prompt(side: Side, step: str, domain: str, fields: dict[str, Any], *, with_target: bool, **extra: Any):
    """Messages of ``r4ec_{side}_{step}``; ``with_target=False`` drops the target (actor / reflection inputs)."""
    f = dict(fields, **extra)
    if not with_target:
        f[CONSTRUCTION_ONLY[side]] = None
    return render(f"r4ec_{side}_{step}", domain, **f)


OPENING_TAG = {"reason": REASON_TAG, "refine": REFINE_TAG,
               "reflect": {"user": "Final Judgement", "item": "Final Judgement"}}


def _ask(llm, side: Side, step: str, prompts: list, parser, gen: GenArgs, with_target: bool = False, **kwargs: Any):
    """``generate_parsed`` for one step; with ``gen.prime`` every answer starts with the step's opening tag
    (response priming), which small models need to write in the format at all; with ``gen.constrain`` decoding
    follows the step's answer format (the constraint covers the whole answer, so a primed tag is part of it)."""
    if gen.constrain:
        from ..llm.specs import task_spec

        kwargs["constraint"] = task_spec(f"r4ec_{side}_{step}", gen.domain, with_target=with_target,
                                         max_new_tokens=kwargs.get("max_new_tokens", gen.max_new_tokens)).constraint
    if not gen.prime:
        return generate_parsed(llm, prompts, parser, **{**gen.kwargs(), **kwargs})
    tag = f"<{OPENING_TAG[step][side]}>"
    primed = [[*p, {"role": "assistant", "content": tag}] for p in prompts]
    # the prefix is not part of the generated text; the parser reads the whole answer
    return generate_parsed(llm, primed, lambda text: parser(tag + text), **{**gen.kwargs(), **kwargs})


def reasoned_text(side: Side, knowledge: str, refined: bool = False) -> str:
    """The actor's completion format (what SFT teaches it to write)."""
    tag = (REFINE_TAG if refined else REASON_TAG)[side]
    return f"<{tag}>{knowledge}</{tag}>"


def judgement_text(side: Side, reasonable: bool, reflection: str) -> str:
    """The reflection model's completion format."""
    verdict = REASONABLE[side] if reasonable else UNREASONABLE[side]
    return f"<Final Judgement>{verdict}</Final Judgement>\n<Reflection>{'' if reasonable else reflection}</Reflection>"


def _sft_row(messages: list[dict[str, str]], completion: str, case_key: str) -> dict[str, str]:
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    user = next(m["content"] for m in messages if m["role"] == "user")
    return {"key": case_key, "system": system, "prompt": user, "completion": completion}


@dataclass
class Constructed:
    """The three supervision sets of one side and how many cases took each branch of Algorithm 1."""

    reason: list[dict[str, str]] = field(default_factory=list)
    reflect: list[dict[str, str]] = field(default_factory=list)
    refine: list[dict[str, str]] = field(default_factory=list)
    branches: Counter = field(default_factory=Counter)
    parse: ParseStats = field(default_factory=ParseStats)


def construct(teacher, side: Side, domain: str, cases: Sequence[dict[str, Any]], gen: GenArgs) -> Constructed:
    """Algorithm 1 over ``cases`` (dicts with ``key``, ``fields`` — template fields incl. ``target`` — and
    ``label`` — does the target user like the target item). Returns the kept training pairs and branch counts:

    ``correct_reasonable`` → reasoning set + positive reflection sample (empty reflection);
    ``wrong_unreasonable`` → refine; ``refined_correct`` keeps the reflection and the refinement,
    ``refined_wrong`` / ``refine_unparsed`` are discarded; ``correct_unreasonable`` and ``wrong_reasonable`` are
    discarded (reasoning or reflection is likely wrong); ``reason_unparsed`` / ``reflect_unparsed`` count the
    answers that stayed malformed after retries.
    """
    out = Constructed()
    kf = KNOWLEDGE_FIELD[side]
    reason_prompts = [prompt(side, "reason", domain, c["fields"], with_target=True) for c in cases]
    reasoned = _ask(teacher, side, "reason", reason_prompts, parse_reasoned, gen, True, stats=out.parse)

    alive = [i for i, r in enumerate(reasoned) if r.ok]
    out.branches["reason_unparsed"] += len(cases) - len(alive)
    reflect_prompts = [prompt(side, "reflect", domain, cases[i]["fields"], with_target=True,
                              **{kf: reasoned[i].value.knowledge}) for i in alive]
    judged = _ask(teacher, side, "reflect", reflect_prompts, parse_judgement, gen, True, stats=out.parse)

    to_refine = []
    for i, j in zip(alive, judged, strict=True):
        if not j.ok:
            out.branches["reflect_unparsed"] += 1
            continue
        case, r = cases[i], reasoned[i].value
        correct = r.verdict == bool(case["label"])
        actor_in = prompt(side, "reason", domain, case["fields"], with_target=False)
        critic_in = prompt(side, "reflect", domain, case["fields"], with_target=False, **{kf: r.knowledge})
        if correct and j.value.reasonable:
            out.branches["correct_reasonable"] += 1
            out.reason.append(_sft_row(actor_in, reasoned_text(side, r.knowledge), case["key"]))
            out.reflect.append(_sft_row(critic_in, judgement_text(side, True, ""), case["key"]))
        elif not correct and not j.value.reasonable:
            out.branches["wrong_unreasonable"] += 1
            to_refine.append((i, j.value.reflection, critic_in))
        else:
            out.branches["correct_unreasonable" if correct else "wrong_reasonable"] += 1

    refine_prompts = [prompt(side, "refine", domain, cases[i]["fields"], with_target=True,
                             **{kf: reasoned[i].value.knowledge}, reflection=refl) for i, refl, _ in to_refine]
    refined = _ask(teacher, side, "refine", refine_prompts, parse_reasoned, gen, True, stats=out.parse)
    for (i, refl, critic_in), rr in zip(to_refine, refined, strict=True):
        case = cases[i]
        if not rr.ok:
            out.branches["refine_unparsed"] += 1
        elif rr.value.verdict == bool(case["label"]):
            out.branches["refined_correct"] += 1
            out.reflect.append(_sft_row(critic_in, judgement_text(side, False, refl), case["key"]))
            refine_in = prompt(side, "refine", domain, case["fields"], with_target=False,
                               **{kf: reasoned[i].value.knowledge}, reflection=refl)
            out.refine.append(_sft_row(refine_in, reasoned_text(side, rr.value.knowledge, refined=True), case["key"]))
        else:
            out.branches["refined_wrong"] += 1
    return out


def _knowledge_parser(text: str):
    return parse_reasoned(text, need_verdict=False)


@dataclass
class Refinement:
    """Per entity: the actor's first answer (System-1), the final answer after refinement, and the judgements."""

    first: list[str]
    final: list[str]
    judged_unreasonable_first: int = 0
    judged_unreasonable_final: int = 0
    judge_unparsed_first: int = 0
    judge_unparsed_final: int = 0
    refined: int = 0
    parse: ParseStats = field(default_factory=ParseStats)


def iterative_refinement(llm, side: Side, domain: str, entities: Sequence[dict[str, Any]], *, actor: str,
                         reflector: str, max_steps: int, gen: GenArgs) -> Refinement:
    """§3.5 "Iterative Refinement": actor → reflection → refine while judged unreasonable, at most
    ``max_steps`` times (the paper's default is 1). An answer that stays malformed keeps the last good text
    (or the empty string when the actor never produced one)."""
    kf = KNOWLEDGE_FIELD[side]
    out_stats = ParseStats()
    first = _ask(llm, side, "reason", [prompt(side, "reason", domain, e, with_target=False) for e in entities],
                 _knowledge_parser, gen, adapter=actor, stats=out_stats)
    current = [r.value.knowledge if r.ok else "" for r in first]
    res = Refinement(first=list(current), final=current, parse=out_stats)
    pending = [i for i, t in enumerate(current) if t]
    for step in range(max_steps + 1):
        if not pending:
            break
        judged = _ask(
            llm, side, "reflect",
            [prompt(side, "reflect", domain, entities[i], with_target=False, **{kf: current[i]}) for i in pending],
            parse_judgement, gen, adapter=reflector, stats=out_stats)
        bad = [(i, j.value.reflection) for i, j in zip(pending, judged, strict=True) if j.ok and not j.value.reasonable]
        # A judgement still malformed after generate_parsed's retries is neither "reasonable" nor a reflection
        # to refine with: it is counted apart (it used to count as reasonable, hiding the answer from refinement)
        unparsed = sum(1 for j in judged if not j.ok)
        if step == 0:
            res.judged_unreasonable_first, res.judge_unparsed_first = len(bad), unparsed
        res.judged_unreasonable_final, res.judge_unparsed_final = len(bad), unparsed
        if step == max_steps or not bad:
            break
        refined = _ask(
            llm, side, "refine",
            [prompt(side, "refine", domain, entities[i], with_target=False, **{kf: current[i]}, reflection=refl)
             for i, refl in bad], _knowledge_parser, gen, adapter=actor, stats=out_stats)
        pending = []
        for (i, _), r in zip(bad, refined, strict=True):
            if r.ok:
                current[i] = r.value.knowledge
                res.refined += 1
                pending.append(i)
    return res


@dataclass
class Filtered:
    """Per entity: ``k`` sampled answers and which of them the reflection model judged reasonable."""

    samples: list[list[str]]
    keep: list[list[bool]]
    judge_unparsed: int = 0
    parse: ParseStats = field(default_factory=ParseStats)

    @property
    def kept_fraction(self) -> float:
        flat = [k for row in self.keep for k in row]
        return sum(flat) / max(len(flat), 1)


def reflection_filter(llm, side: Side, domain: str, entities: Sequence[dict[str, Any]], *, actor: str,
                      reflector: str, k: int, temperature: float, gen: GenArgs) -> Filtered:
    """§3.5 "Reflection as a Filter": ``k`` actor samples per entity, each judged by the reflection model; the
    caller averages the embeddings of the kept ones (all of them when none is kept)."""
    kf = KNOWLEDGE_FIELD[side]
    stats = ParseStats()
    prompts = [prompt(side, "reason", domain, e, with_target=False) for e in entities]
    samples: list[list[str]] = []
    for s in range(k):  # one seed per sample index, so every sample is cached on its own
        got = _ask(llm, side, "reason", prompts, _knowledge_parser, gen, adapter=actor, stats=stats,
                   temperature=temperature, seed=gen.seed + 1000 * (s + 1))
        for i, r in enumerate(got):
            if s == 0:
                samples.append([])
            samples[i].append(r.value.knowledge if r.ok else "")
    flat = [(i, s) for i in range(len(entities)) for s in range(k) if samples[i][s]]
    judged = _ask(
        llm, side, "reflect",
        [prompt(side, "reflect", domain, entities[i], with_target=False, **{kf: samples[i][s]}) for i, s in flat],
        parse_judgement, gen, adapter=reflector, stats=stats)
    keep = [[False] * k for _ in entities]
    for (i, s), j in zip(flat, judged, strict=True):
        keep[i][s] = bool(j.ok and j.value.reasonable)  # an unparsed judgement keeps nothing, and is counted
    return Filtered(samples=samples, keep=keep, judge_unparsed=sum(1 for j in judged if not j.ok), parse=stats)


def single_answer(llm, side: Side, domain: str, entities: Sequence[dict[str, Any]], *, adapter: str | None,
                  gen: GenArgs) -> tuple[list[str], ParseStats]:
    """One greedy reasoning answer per entity, no reflection: the ``kar`` row (``adapter=None``: the un-tuned
    model, KAR's single chain-of-thought answer) and the ``r2ec`` row (the actor trained on D_reason only,
    R4ec §4.1.4). A malformed answer (after retries) is the empty string."""
    stats = ParseStats()
    got = _ask(llm, side, "reason", [prompt(side, "reason", domain, e, with_target=False) for e in entities],
               _knowledge_parser, gen, adapter=adapter, stats=stats)
    return [r.value.knowledge if r.ok else "" for r in got], stats
