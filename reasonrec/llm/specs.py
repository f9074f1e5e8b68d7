"""One declaration per prompt task: the answer format from which both the task's parser input and its constraint
derive, so the two cannot drift apart.

A format is a list of parts — fixed text (:class:`Lit`), a bounded free-text field (:class:`Text`), one of fixed
strings (:class:`OneOf`) — or a choice between such lists (R4ec's judgement: "reasonable" with an empty reflection,
or "not reasonable" with one). :func:`task_spec` gives, for a task of ``reasonrec/prompts`` and the sample it is
rendered for, a :class:`TaskSpec`: the :class:`~reasonrec.llm.constraints.Constraint` (a regex compiled from the
parts, or a :class:`~reasonrec.llm.constraints.Ranking`), the parser of :mod:`reasonrec.llm.parsers` that reads the
answer, and :meth:`TaskSpec.example`, the canonical answer the parts spell out for given field values (the tests
check that the parser reads every example back, and that every example matches the constraint).

Free-text fields get a character bound from the call's ``max_new_tokens`` (minus what the fixed parts need), so
the closing tags always fit: see :func:`~reasonrec.llm.constraints.chars_for_tokens`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from . import parsers
from .constraints import Choice, Constraint, Ranking, Regex, chars_for_tokens, regex_escape
from .prompts import DOMAINS, TASKS

# The noun of the R4ec verdict phrase per domain (the templates' "user will like the target song" ...).
NOUN = {"movie": "movie", "book": "book", "music": "song", "business": "business"}
# Free text may not contain "<": every text field of these formats is closed by a tag.
_FREE = "[^<]"


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Text:
    """A free-text field named ``name``; ``share`` weights its part of the character budget."""

    name: str
    share: float = 1.0
    line: bool = False  # a single line (no line break), for fields followed by a newline-delimited part


@dataclass(frozen=True)
class OneOf:
    name: str
    options: tuple[str, ...]


Part = Lit | Text | OneOf


def _fixed_tokens(parts: Sequence[Part]) -> int:
    """Tokens the fixed parts need, estimated high (SmolLM2 writes "<User Preference>" as 5 tokens)."""
    chars = sum(len(p.text) for p in parts if isinstance(p, Lit))
    chars += sum(max(map(len, p.options)) for p in parts if isinstance(p, OneOf))
    return chars // 3 + 4


def _regex(parts: Sequence[Part], budget: int) -> str:
    texts = [p for p in parts if isinstance(p, Text)]
    total = sum(t.share for t in texts) or 1.0
    chars = chars_for_tokens(budget, reserve=_fixed_tokens(parts))
    out = []
    for p in parts:
        if isinstance(p, Lit):
            out.append(regex_escape(p.text))
        elif isinstance(p, OneOf):
            out.append("(" + "|".join(regex_escape(o) for o in p.options) + ")")
        else:
            cls = "[^<\\n]" if p.line else _FREE
            out.append(f"{cls}{{1,{max(8, int(chars * p.share / total))}}}")
    return "".join(out)


def _example(parts: Sequence[Part], values: Mapping[str, str]) -> str:
    return "".join(p.text if isinstance(p, Lit) else str(values[p.name]) for p in parts)


@dataclass(frozen=True)
class TaskSpec:
    """The answer format of one task rendered for one sample.

    constraint: what ``generate(constraint=)`` enforces; parse: the parser of the raw answer (tolerant of
    unconstrained answers too); branches: the part lists (alternatives) the constraint allows, ``None`` for
    rankings; example: canonical answer text for field values (``branch`` picks the alternative).
    """

    task: str
    constraint: Constraint
    parse: Callable[[str], Any]
    branches: tuple[tuple[Part, ...], ...] | None = None

    def example(self, values: Mapping[str, str], branch: int = 0) -> str:
        if self.branches is None:
            raise ConfigError(f"{self.task}: a ranking's example is its titles in order; build it from them")
        return _example(self.branches[branch], values)


def _spec(task: str, branches: Sequence[Sequence[Part]], parse: Callable[[str], Any], budget: int) -> TaskSpec:
    pattern = "|".join(f"(?:{_regex(b, budget)})" for b in branches) if len(branches) > 1 else _regex(branches[0],
                                                                                                    budget)
    reserve = max(_fixed_tokens(b) for b in branches) if any(isinstance(p, Text) for b in branches for p in b) else 0
    return TaskSpec(task=task, constraint=Regex(pattern, reserve_tokens=reserve), parse=parse,
                    branches=tuple(tuple(b) for b in branches))


def _verdict(domain: str) -> OneOf:
    noun = NOUN[domain]
    return OneOf("verdict", (f"user will like the target {noun}", f"user will not like the target {noun}"))


def _reasoned(tag: str, domain: str, with_target: bool) -> list[Part]:
    parts: list[Part] = [Lit(f"<{tag}>"), Text("knowledge"), Lit(f"</{tag}>")]
    if with_target:
        parts += [Lit("\n<Final Verdict>"), _verdict(domain), Lit("</Final Verdict>")]
    return parts


def _judgement(subject: str) -> list[list[Part]]:
    ok = [Lit(f"<Final Judgement>The {subject} is reasonable</Final Judgement>\n<Reflection></Reflection>")]
    bad = [Lit(f"<Final Judgement>The {subject} is not reasonable</Final Judgement>\n<Reflection>"), Text("reflection"),
           Lit("</Reflection>")]
    return [ok, bad]


def _parse_reasoned(need_verdict: bool) -> Callable[[str], Any]:
    return functools.partial(parsers.parse_reasoned, need_verdict=need_verdict)


def task_spec(task: str, domain: str = "movie", *, max_new_tokens: int = 256, with_target: bool = True,
              candidates: Mapping[Any, str] | None = None, explain: bool = True) -> TaskSpec:
    """The :class:`TaskSpec` of ``task`` for a sample: ``with_target`` as the R4ec prompt was rendered (a
    construction prompt asks for a verdict, an actor prompt does not); ``candidates`` (id → title, in the order
    shown) for ``starec_rank``; ``max_new_tokens`` the call's budget that bounds the free-text fields."""
    if task not in TASKS:
        raise ConfigError(f"unknown prompt task '{task}'; tasks: {', '.join(TASKS)}")
    if domain not in DOMAINS:
        raise ConfigError(f"unknown prompt domain '{domain}'; domains: {', '.join(DOMAINS)}")
    b = max_new_tokens
    if task in ("r4ec_user_reason", "r4ec_user_refine", "r4ec_item_reason", "r4ec_item_refine"):
        side = "User Preference" if "_user_" in task else "Item Fact"
        tag = f"Refined {side}" if task.endswith("refine") else side
        return _spec(task, [_reasoned(tag, domain, with_target)], _parse_reasoned(with_target), b)
    if task in ("r4ec_user_reflect", "r4ec_item_reflect"):
        subject = "user preference" if "_user_" in task else "item fact"
        return _spec(task, _judgement(subject), parsers.parse_judgement, b)
    if task == "trackrec_cot":
        return _spec(task, [[Text("summary")]], str.strip, b)
    if task in ("trackrec_rec", "thinkrec_rec"):
        return TaskSpec(task=task, constraint=Choice(["Yes", "No"]), parse=parsers.parse_yes_no,
                        branches=((OneOf("answer", ("Yes", "No")),),))
    if task == "starec_memory":
        parts = [Lit("<think>"), Text("thought"), Lit("</think>\nUpdated User description: "), Text("memory")]
        return _spec(task, [parts], parsers.parse_memory, b)
    if task == "thinkrec_reason":
        parts = [Lit("<think>"), Text("thought", share=3), Lit("</think>\nAnswer: "), OneOf("answer", ("Yes", "No")),
                 Lit("\nReason: "), Text("reason", line=True)]
        return _spec(task, [parts], parsers.parse_answer_reason, b)
    # starec_rank
    if not candidates:
        raise ConfigError("starec_rank: task_spec needs the candidates (id → title) the prompt shows")
    titles = [str(t) for t in candidates.values()]
    # Each line takes its title (~1 token per 2 characters: SmolLM2 writes "(1995)" as 6 tokens) and "k. " plus
    # " - "; the rest is shared by the think block and the explanations.
    fixed = sum(len(t) // 2 + 5 for t in titles)
    spare = max(0, max_new_tokens - fixed - 8)
    explain_chars = max(8, chars_for_tokens(spare // (2 * len(titles)))) if explain else 0
    think_chars = max(8, chars_for_tokens(spare // 2))
    constraint = Ranking(titles, explain=explain, explain_chars=explain_chars or 80, think_chars=think_chars)
    return TaskSpec(task=task, constraint=constraint,
                    parse=functools.partial(parsers.parse_ranking, candidates=dict(candidates)))
