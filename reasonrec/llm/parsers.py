"""Parsers for what the four methods ask an LLM to write, and :func:`generate_parsed`, which retries malformed
outputs and counts the ones that stay malformed.

Each parser takes the raw completion and returns a value or raises :class:`ParseError`; none of them ever
raises anything else on any string. Formats follow the papers' prompts:

- Yes/No answers: TrackRec's validator (Fig. 4, "answering Yes. or No."), ThinkRec (App. B), and R4ec's
  ``<Final Verdict>`` ("user will like the target ..." / "user will not like ...").
- judge + reflection: R4ec's ``<Final Judgement>`` / ``<Reflection>`` (Fig. 3).
- ``<think> ... </think>`` blocks: STARec's outputs (Tab. 1-2) and reasoning models' traces.
- numbered rankings: STARec Tab. 1 (``1. [Title] - [Brief Explanation]``), mapped back to candidate ids by
  fuzzy title matching (``rapidfuzz`` when installed, else ``difflib``); duplicates are dropped and candidates
  the model left out are appended in their given order, both recorded.
- memories: STARec Tab. 2 (``Updated User description: ...``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendError
from .base import Prompt
from .constraints import Constraint


class ParseError(BackendError):
    """A completion does not have the expected format."""


# ---------------------------------------------------------------------------------------------- think blocks

_THINK = re.compile(r"<think>(.*?)</think>", re.S | re.I)


def split_think(text: str) -> tuple[str, str]:
    """``(thought, answer)``: text inside ``<think>...</think>`` and the rest. An unclosed ``<think>`` makes the
    remainder thought (the model ran out of tokens while thinking); a lone ``</think>`` (templates that open the
    block in the prompt) makes everything before it thought."""
    text = text or ""
    thoughts = [m.strip() for m in _THINK.findall(text)]
    rest = _THINK.sub("", text)
    low = rest.lower()
    if "<think>" in low:
        i = low.index("<think>")
        thoughts.append(rest[i + len("<think>"):].strip())
        rest = rest[:i]
    elif "</think>" in low:
        i = low.index("</think>")
        thoughts.insert(0, rest[:i].strip())
        rest = rest[i + len("</think>"):]
    return "\n".join(t for t in thoughts if t), rest.strip()


def extract_tag(text: str, tag: str) -> str | None:
    """Content of ``<tag>...</tag>`` (case-insensitive, tolerant of spaces, a missing close tag, and R4ec's
    ``[...]`` brackets around the content); ``None`` if the tag is absent."""
    m = re.search(rf"<\s*{re.escape(tag)}\s*>", text, re.I)
    if not m:
        return None
    body = text[m.end():]
    close = re.search(rf"<\s*/\s*{re.escape(tag.split()[-1])}\s*>|<\s*/\s*{re.escape(tag)}\s*>|<\s*[A-Z][^<>]*>",
                      body, re.I)
    body = body[:close.start()] if close else body
    return _unbracket(body.strip())


def _unbracket(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == "[" and s[-1] == "]":
        s = s[1:-1].strip()
    return s.strip().strip('"').strip()


# ---------------------------------------------------------------------------------------------- yes / no

def parse_yes_no(text: str) -> bool:
    """``True`` for Yes, ``False`` for No: the first Yes/No word of the answer (after any think block), or an
    R4ec verdict phrase. Raises :class:`ParseError` when neither appears or the answer is contradictory
    ("Yes and no")."""
    _, answer = split_think(text)
    verdict = extract_tag(answer, "Final Verdict")
    if verdict is not None:
        answer = verdict
    low = answer.lower()
    if "will not like" in low or "won't like" in low:
        return False
    if "will like" in low:
        return True
    m = re.search(r"\b(yes|no)\b", low)
    if not m:
        raise ParseError(f"no Yes/No answer in {answer[:80]!r}")
    first = m.group(1)
    head = low[: m.end() + 12]
    other = "no" if first == "yes" else "yes"
    if re.search(rf"\b{other}\b", head):
        raise ParseError(f"contradictory Yes/No answer {answer[:80]!r}")
    return first == "yes"


# ---------------------------------------------------------------------------------------------- R4ec

@dataclass
class Judgement:
    """R4ec reflection output: is the knowledge reasonable, and the reflection (empty when reasonable)."""

    reasonable: bool
    reflection: str


def parse_judgement(text: str) -> Judgement:
    _, answer = split_think(text)
    verdict = extract_tag(answer, "Final Judgement") or extract_tag(answer, "Final Judgment")
    if verdict is None:
        m = re.search(r"final judge?ment\s*[:\-]?\s*(.*)", answer, re.I)
        verdict = m.group(1).split("\n")[0] if m else answer[:200]
    low = verdict.lower()
    if re.search(r"\b(not reasonable|unreasonable|not correct|incorrect)\b", low):
        reasonable = False
    elif re.search(r"\b(reasonable|correct)\b", low):
        reasonable = True
    else:
        raise ParseError(f"no judgement ('reasonable' / 'not reasonable') in {verdict[:80]!r}")
    reflection = extract_tag(answer, "Reflection")
    if reflection is None:
        m = re.search(r"reflection\s*[:\-]\s*(.*)", answer, re.I | re.S)
        reflection = _unbracket(m.group(1)) if m else ""
    if not reasonable and not reflection:
        raise ParseError("judged 'not reasonable' but no reflection was given")
    # R4ec: a reasonable judgement carries no reflection.
    return Judgement(reasonable=reasonable, reflection="" if reasonable else reflection)


@dataclass
class Reasoned:
    """R4ec reasoning/refinement output: the knowledge text and the verdict (``None`` when the task has none,
    e.g. item facts)."""

    knowledge: str
    verdict: bool | None


def parse_reasoned(text: str, tags: Sequence[str] = ("Refined User Preference", "User Preference",
                                                    "Refined Item Fact", "Item Fact"),
                   need_verdict: bool = True) -> Reasoned:
    _, answer = split_think(text)
    knowledge = next((k for k in (extract_tag(answer, t) for t in tags) if k), None)
    if not knowledge:
        raise ParseError(f"none of the tags {list(tags)} found in {answer[:80]!r}")
    verdict_text = extract_tag(answer, "Final Verdict")
    verdict = None
    if verdict_text is not None or need_verdict:
        try:
            verdict = parse_yes_no(verdict_text if verdict_text is not None else "")
        except ParseError:
            if need_verdict:
                raise
    return Reasoned(knowledge=knowledge, verdict=verdict)


# ---------------------------------------------------------------------------------------------- rankings

@dataclass
class Ranking:
    """A parsed ranking: ``ids`` holds every candidate exactly once (model order, then missing ones)."""

    ids: list[Any]
    matched: int
    missing: list[Any] = field(default_factory=list)
    duplicates: list[Any] = field(default_factory=list)
    unmatched_lines: list[str] = field(default_factory=list)
    explanations: dict[Any, str] = field(default_factory=dict)


_ITEM_LINE = re.compile(r"^\s*(?:[-*•]\s*)?\**\s*\[?(\d{1,3})\]?\s*[.):\]]\s*\**\s*(.+?)\s*$")


def _norm(s: str) -> str:
    s = s.lower()
    s = re.sub(r"^(the|a|an)\s+|,\s*(the|a|an)\b", " ", s)  # "Matrix, The" ~ "The Matrix"
    return " ".join(re.sub(r"[^a-z0-9]+", " ", s).split())


def _similarity(a: str, b: str) -> float:
    try:
        from rapidfuzz import fuzz

        return fuzz.ratio(a, b) / 100.0
    except ImportError:
        return difflib.SequenceMatcher(None, a, b).ratio()


def _forms(title: str) -> set[str]:
    """Normalised forms of a title: as is, and without a trailing "(1995)" (models often drop the year)."""
    forms = {_norm(title), _norm(re.sub(r"\(\d{4}\)\s*$", "", title))}
    return {f for f in forms if f}


def _match(line: str, forms: Mapping[Any, set[str]], cutoff: float) -> tuple[Any, str] | None:
    """The candidate a line names, and the line's explanation part."""
    body = line.strip().strip("*").strip()
    # "Title (1995) - explanation" / "**Title**: explanation"
    parts = re.split(r"\s+[-–—:]\s+|\*\*\s*[-–—:]?\s*", body, maxsplit=1)
    head = _unbracket(parts[0].strip("*\"' "))
    explanation = parts[1].strip() if len(parts) > 1 else ""
    h = _norm(head)
    for cid, fs in forms.items():
        if h in fs:
            return cid, explanation
    # A title inside the head, then inside the whole line; the longest wins ("Heat" vs "Heat and Dust").
    for text in (h, _norm(body)):
        padded = f" {text} "
        hits = [(len(f), cid) for cid, fs in forms.items() for f in fs if f" {f} " in padded]
        if hits:
            return max(hits, key=lambda x: x[0])[1], explanation
    scored = [(_similarity(h, f), cid) for cid, fs in forms.items() for f in fs]
    best = max(scored, key=lambda x: x[0], default=None)
    if best is not None and best[0] >= cutoff:
        return best[1], explanation
    return None


def parse_ranking(text: str, candidates: Mapping[Any, str], cutoff: float = 0.75,
                  min_matched: int = 1) -> Ranking:
    """Map a numbered list back to candidate ids (``candidates``: id → title, in the order shown).

    Lines are read in their numbering order; each is matched to a title by normalised equality, then by the
    title occurring in the line, then by fuzzy similarity ≥ ``cutoff``. Raises :class:`ParseError` if fewer
    than ``min_matched`` lines name a candidate.
    """
    _, answer = split_think(text)
    numbered = []
    for line in answer.splitlines():
        m = _ITEM_LINE.match(line)
        if m:
            numbered.append((int(m.group(1)), m.group(2)))
    numbered.sort(key=lambda x: x[0])  # stable: equal numbers keep their line order
    ranking = Ranking(ids=[], matched=0)
    forms = {cid: _forms(str(title)) for cid, title in candidates.items()}
    seen = set()
    for _, line in numbered:
        hit = _match(line, forms, cutoff)
        if hit is None:
            ranking.unmatched_lines.append(line)
            continue
        cid, explanation = hit
        if cid in seen:
            ranking.duplicates.append(cid)
            continue
        seen.add(cid)
        ranking.ids.append(cid)
        ranking.explanations[cid] = explanation
    ranking.matched = len(ranking.ids)
    if ranking.matched < min_matched:
        raise ParseError(f"ranking names {ranking.matched} of {len(candidates)} candidates "
                         f"(need {min_matched}); {len(numbered)} numbered lines")
    ranking.missing = [cid for cid in candidates if cid not in seen]
    ranking.ids.extend(ranking.missing)
    return ranking


# ---------------------------------------------------------------------------------------------- memories

_MEMORY = re.compile(r"updated\s+user\s+description\s*\**\s*[:\-]\s*\**", re.I)


def parse_memory(text: str) -> str:
    """STARec's updated memory: the text after the last ``Updated User description:``."""
    _, answer = split_think(text)
    matches = list(_MEMORY.finditer(answer))
    if not matches:
        raise ParseError(f"no 'Updated User description:' in {answer[:80]!r}")
    memory = _unbracket(answer[matches[-1].end():].strip())
    if not memory:
        raise ParseError("'Updated User description:' is empty")
    return memory


# ---------------------------------------------------------------------------------------------- ThinkRec

@dataclass
class AnswerReason:
    """ThinkRec's reasoning output: the Yes/No answer and its one- or two-sentence reason."""

    answer: bool
    reason: str


_ANSWER = re.compile(r"answer\s*\**\s*[:\-]\s*\**\s*\[?\s*(yes|no)\b", re.I)
_REASON = re.compile(r"reason\s*\**\s*[:\-]\s*(.*)", re.I | re.S)


def parse_answer_reason(text: str) -> AnswerReason:
    """``Answer: Yes|No`` and ``Reason: ...`` after the think block (ThinkRec App. B); a missing reason is an
    empty string, a missing answer a :class:`ParseError`."""
    _, answer = split_think(text)
    m = _ANSWER.search(answer)
    if not m:
        raise ParseError(f"no 'Answer: Yes/No' in {answer[:80]!r}")
    r = _REASON.search(answer[m.end():])
    return AnswerReason(answer=m.group(1).lower() == "yes", reason=_unbracket(r.group(1)) if r else "")


# ---------------------------------------------------------------------------------------------- retries

@dataclass
class Parsed:
    """One prompt's outcome: ``value`` is the parser's result (``None`` on failure); ``text`` the last raw
    completion; ``attempts`` how many completions were tried; ``error`` the last parse error."""

    value: Any
    text: str
    attempts: int
    ok: bool
    error: str = ""


@dataclass
class ParseStats:
    total: int = 0
    ok: int = 0
    retried: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"parse/total": self.total, "parse/ok": self.ok, "parse/retried": self.retried,
                "parse/failures": self.failures}


def generate_parsed(llm, prompts: Sequence[Prompt], parser: Callable[[str], Any], max_attempts: int = 3,
                    retry_temperature: float = 0.7, stats: ParseStats | None = None, **gen_kwargs: Any
                    ) -> list[Parsed]:
    """Generate, parse, and regenerate only the prompts whose output did not parse, up to ``max_attempts``.
    ``constraint=`` (one, or one per prompt) is passed on to ``generate``.

    Retries sample at ``retry_temperature`` with a new seed per attempt (a greedy retry would repeat the same
    text, and the cache would return it), so they are cached like any other call. Prompts still malformed after
    the last attempt are returned with ``ok=False`` and counted in ``stats.failures``; the run goes on.
    """
    stats = stats if stats is not None else ParseStats()
    results: list[Parsed | None] = [None] * len(prompts)
    todo = list(range(len(prompts)))
    adapter = gen_kwargs.pop("adapter", None)
    constraint = gen_kwargs.pop("constraint", None)
    base_seed = gen_kwargs.pop("seed", 0)
    for attempt in range(max_attempts):
        if not todo:
            break
        kwargs = dict(gen_kwargs, n=1)
        if attempt > 0:
            kwargs.update(temperature=max(gen_kwargs.get("temperature", 0.0), retry_temperature))
        adapters = adapter if (adapter is None or isinstance(adapter, str)) else [adapter[i] for i in todo]
        if constraint is not None:  # one for all, or one per prompt (subset like the adapters)
            kwargs["constraint"] = constraint if isinstance(constraint, Constraint) else [constraint[i] for i in todo]
        gens = llm.generate([prompts[i] for i in todo], seed=base_seed + attempt, adapter=adapters, **kwargs)
        still = []
        for i, g in zip(todo, gens, strict=True):
            try:
                results[i] = Parsed(value=parser(g.text), text=g.text, attempts=attempt + 1, ok=True)
            except ParseError as err:
                results[i] = Parsed(value=None, text=g.text, attempts=attempt + 1, ok=False, error=str(err))
                still.append(i)
        todo = still
    stats.total += len(prompts)
    stats.failures += len(todo)
    stats.ok += len(prompts) - len(todo)
    stats.retried += sum(1 for r in results if r is not None and r.attempts > 1)
    return results  # type: ignore[return-value]
