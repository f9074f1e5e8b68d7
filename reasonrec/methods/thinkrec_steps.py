"""ThinkRec's steps as plain functions (no stage bookkeeping): keywords, prompts, reason synthesis, routing.

- :func:`extract_keywords` (§3.2.1, item augmentation): up to 10 keywords per item from its metadata. DEVIATION:
  the paper runs a summarisation model (Wei et al. 2023); we rank the metadata's own words and word pairs by the
  cosine of their embedding to the embedding of the item's whole metadata text (KeyBERT-style), with the bundled
  encoder — offline, deterministic, and it can only return words the metadata contains. On ML-100K the metadata
  is title, year and genres, so the keywords are genres and title words.
- :func:`rec_prompt` / :func:`think_prompt` (App. B.3): the recommendation prompt (history = last 10
  interactions, likes and dislikes marked, keywords per item); ``soft=True`` appends the collaborative user and
  item token placeholders (CoLLM); :func:`think_prompt` asks for the reason after the answer (reasoning samples,
  reasons on request).
- :func:`synthesize_reasons` (§3.2.2, App. B.2): the teacher is asked with the reasoning prompt until its
  Yes/No matches the label; each re-ask adds the hint "the correct answer is …" (as ThinkRec's public code) and
  samples with a new seed. The last reason is kept; tries and give-ups are counted.
- :func:`route_samples`: each sample gets its user's gate route (§3.3.2; the rules are in
  :mod:`reasonrec.train.experts`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..llm.prompts import render

MAX_KEYWORDS = 10
_STOP = frozenset("""a an and the of in on at to for from by with without is are was were be been it its this that
these those as or not no but so if than then there their they them he she his her we our you your i me my
de la le les el los das der die und""".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]+")
SOFT_LINE = "Collaborative information of the user and the item: {ph} {ph}."
THINK_ASK = " After the answer, explain the reason in one or two sentences."


# ---------------------------------------------------------------------------------------------- keywords

def metadata_text(row: dict[str, Any]) -> str:
    """The item's metadata as one text: title, categories, description (whatever the table has)."""
    parts = [str(row.get("title", "") or "")]
    for col in ("categories", "description", "brand"):
        v = row.get(col)
        if v is not None and v == v and str(v).strip():
            parts.append(str(v).replace("|", ", "))
    return ". ".join(p for p in parts if p)


def candidates(text: str) -> list[str]:
    """Distinct lower-cased words and adjacent word pairs (within one phrase: never across punctuation or a
    year) of ``text`` without stop words, in order of appearance."""
    out, pairs = [], []
    for phrase in re.split(r"[^A-Za-z'\- ]+", text):
        words = [w.lower().strip("'-") for w in _WORD.findall(phrase)]
        words = [w for w in words if len(w) > 1]
        out += [w for w in words if w not in _STOP]
        pairs += [f"{a} {b}" for a, b in zip(words, words[1:], strict=False) if a not in _STOP and b not in _STOP]
    return list(dict.fromkeys(out + pairs))


def extract_keywords(rows: Sequence[dict[str, Any]], encoder, k: int = MAX_KEYWORDS) -> list[str]:
    """Per item, up to ``k`` candidates ranked by cosine to the item text (a pair only if it adds a new word)."""
    texts = [metadata_text(r) for r in rows]
    cands = [candidates(t) for t in texts]
    flat = sorted({c for cs in cands for c in cs})
    doc = encoder.encode(texts)
    vec = dict(zip(flat, encoder.encode(flat), strict=True)) if flat else {}
    out = []
    for d, cs in zip(doc, cands, strict=True):
        ranked = sorted(cs, key=lambda c: -float(np.dot(vec[c], d)))
        chosen: list[str] = []
        covered: set[str] = set()
        for c in ranked:
            words = set(c.split())
            if words <= covered:   # "science fiction" after "science" and "fiction": nothing new
                continue
            chosen.append(c)
            covered |= words
            if len(chosen) == k:
                break
        out.append(", ".join(chosen))
    return out


# ---------------------------------------------------------------------------------------------- prompts

def rec_prompt(domain: str, fields: dict[str, Any], soft: bool = False, placeholder: str = "") -> str:
    text = render("thinkrec_rec", domain, history=fields["history"], target=fields["target"])[-1]["content"]
    return text + ("\n" + SOFT_LINE.format(ph=placeholder) if soft else "")


def think_prompt(domain: str, fields: dict[str, Any], soft: bool = False, placeholder: str = "") -> str:
    """The recommendation prompt asking for the reason after the Yes/No (reasoning samples; reasons on request)."""
    text = render("thinkrec_rec", domain, history=fields["history"], target=fields["target"])[-1]["content"]
    return text + THINK_ASK + ("\n" + SOFT_LINE.format(ph=placeholder) if soft else "")


def reason_prompt(domain: str, fields: dict[str, Any], hint: str | None = None) -> str:
    text = render("thinkrec_reason", domain, history=fields["history"], target=fields["target"])[-1]["content"]
    return text if hint is None else f"{text}\nHint: the correct answer is {hint}."


# ---------------------------------------------------------------------------------------------- synthesis

_ANSWER = re.compile(r"answer\s*[:：]?\s*\**\s*(yes|no)\b", re.I)
_REASON = re.compile(r"reason\s*[:：]\s*(.+)", re.I | re.S)
_THINK = re.compile(r"<think>(.*?)(</think>|$)", re.I | re.S)


def parse_answer(text: str) -> str | None:
    """``Yes`` / ``No`` from "Answer: …"; else the first standalone yes/no after the thinking block; else None."""
    m = _ANSWER.search(text)
    if m:
        return m.group(1).capitalize()
    rest = re.sub(r"<think>.*?</think>", " ", text, flags=re.I | re.S)
    m = re.search(r"\b(yes|no)\b", rest, re.I)
    return m.group(1).capitalize() if m else None


def parse_reason(text: str) -> str:
    """The "Reason: …" part; else the thinking block; else the whole text (whitespace collapsed)."""
    m = _REASON.search(text) or _THINK.search(text)
    out = m.group(1) if m else text
    return " ".join(re.sub(r"</?think>", " ", out).split())


@dataclass
class Synthesis:
    """Per sample: the kept ``reason``, the teacher's last ``answer`` and ``tries``; ``gave_up`` when no try
    matched the label (its last reason is kept anyway and flagged, never trained on)."""

    reasons: list[str]
    answers: list[str | None]
    tries: list[int]
    gave_up: list[bool]

    def stats(self) -> dict[str, float]:
        n = max(len(self.tries), 1)
        return {"samples": len(self.tries), "mean_tries": float(np.mean(self.tries)) if self.tries else 0.0,
                "gave_up": int(sum(self.gave_up)), "gave_up_share": sum(self.gave_up) / n,
                "first_try_share": sum(t == 1 and not g for t, g in zip(self.tries, self.gave_up, strict=True)) / n}


def synthesize_reasons(teacher, domain: str, fields: Sequence[dict[str, Any]], labels: Sequence[int], *,
                       max_tries: int, max_new_tokens: int, temperature: float, seed: int) -> Synthesis:
    """Ask, check the Yes/No against the label, re-ask the mismatched ones with the hint (batched per round)."""
    n = len(fields)
    want = ["Yes" if int(y) else "No" for y in labels]
    reasons, answers = [""] * n, [None] * n
    tries, done = [0] * n, [False] * n
    for t in range(max_tries):
        todo = [i for i in range(n) if not done[i]]
        if not todo:
            break
        prompts = [reason_prompt(domain, fields[i], None if t == 0 else want[i]) for i in todo]
        # a re-ask must not repeat the greedy answer: sampled, seeded per round
        gens = teacher.generate(prompts, n=1, max_new_tokens=max_new_tokens, seed=seed + t,
                                temperature=temperature if t == 0 else max(temperature, 0.7))
        for i, g in zip(todo, gens, strict=True):
            tries[i] += 1
            answers[i] = parse_answer(g.text)
            reasons[i] = parse_reason(g.text)
            done[i] = answers[i] == want[i]
    return Synthesis(reasons, answers, tries, [not d for d in done])


def answer_text(label: int, reason: str | None = None) -> str:
    """A training answer: "Yes." / "No.", with the reason after it for a reasoning sample."""
    word = "Yes." if int(label) else "No."
    return word if not reason else f"{word} {reason}"


def strip_answer(text: str) -> str:
    """A generated reason without its leading Yes/No."""
    return re.sub(r"^\s*(yes|no)\b[.,:!]?\s*", "", str(text), flags=re.I).strip()


# ---------------------------------------------------------------------------------------------- routing

def route_samples(user_ids: np.ndarray, user_emb: np.ndarray, centers: np.ndarray, *, tau: float,
                  single_margin: float, entropy_threshold: float):
    """Each sample's gate route (its user's): expert, global or fused with the gate weights (Eq. 8-9)."""
    from ..train.experts import gate_weights, route_users

    users = np.unique(user_ids)
    w = gate_weights(user_emb[users], centers, tau=tau)
    by_user = dict(zip(users.tolist(), route_users(w, single_margin=single_margin,
                                                   entropy_threshold=entropy_threshold), strict=True))
    return [by_user[int(u)] for u in user_ids]
