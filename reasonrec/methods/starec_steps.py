"""STARec's steps (CIKM'25, §4): agent memory, fast-thinking ranking, slow-thinking replay with self-reflection,
SFT-data screening and augmentation, and the AgentCF / LLMRank baselines. Plain functions over an LLM; the stages
in :mod:`reasonrec.methods.starec` call them.

- Memory (§4.1.1): :class:`Memory` = demographics + preference description + interaction history (title, year,
  genres, liked/disliked). Every change is a new version (:class:`MemoryStore`: one JSON line per *user*, written
  with one ``write`` + fsync once the user's replay is over, so a killed run re-replays no committed user).
- Fast thinking (§4.1.2, Tab. 1): :func:`rank` renders ``starec_rank`` and decodes under the
  :class:`~reasonrec.llm.constraints.Ranking` constraint where the backend enforces it (a permutation of the
  candidates), else free; either way :func:`~reasonrec.llm.parsers.parse_ranking` reads it and the duplicates,
  missing items and unparsable answers are counted (:class:`RankStats`).
- Slow thinking (§4.1.3, Tab. 2): :func:`replay` walks a user's last interactions in time order; the rank the agent
  gives the real item among sampled negatives is its prediction (top half = "Predicted Liked"); if it disagrees
  with the rating (> 3 = liked) the agent reflects (``starec_memory``, "Updated User description: …"); then the item
  joins the history. ``reflect=False`` is the "w/o self-reflection" ablation (append only).
- SFT anchoring (§4.2.1): :func:`screen` rejects broken format, missing CoT, no ranking, no positive and NDCG below
  a threshold; :func:`augment_prompt` is the "prompt error + rethink" re-prompt.

DEVIATIONS (the paper leaves these open): the replay covers each user's last ``steps`` interactions (the earlier
ones start the history) with ``candidates`` items per step (the real one + unseen negatives), to bound the cost;
the rethink message names the screening error and, for a low NDCG, the position the user's real item got, but
never the item (the SFT target must stay the teacher's own ranking).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..llm import parsers
from ..llm.constraints import Choice
from ..llm.prompts import render
from ..llm.specs import Lit, Text, _spec, task_spec

# ---------------------------------------------------------------------------------------------- memory


@dataclass
class Memory:
    """One user agent's memory (§4.1.1): ``user`` demographics, ``description`` (the preference text the agent
    rewrites), ``history`` (item fields with ``liked``, oldest first) and ``version`` (one per change)."""

    user_id: int
    user: dict[str, Any]
    description: str
    history: list[dict[str, Any]]
    version: int = 0

    def fields(self, history_len: int) -> dict[str, Any]:
        return {"user": self.user, "memory": self.description, "history": self.history[-history_len:]}


class MemoryStore:
    """Append-only ``memories.jsonl``: one line per replayed user with every version of its memory (user, version,
    text, cause, and the item / prediction / feedback that caused it). A torn last line (kill -9 inside the write)
    is dropped on open, so that user is replayed again; a complete line is never replayed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.users: dict[int, dict] = {}
        if self.path.exists():
            good, raw = 0, self.path.read_bytes()
            for line in raw.splitlines(keepends=True):
                try:
                    rec = json.loads(line)
                except ValueError:
                    break
                if not line.endswith(b"\n"):
                    break
                self.users[int(rec["user_id"])] = rec
                good += len(line)
            if good < len(raw):
                with open(self.path, "r+b") as f:
                    f.truncate(good)

    def commit(self, rec: dict) -> None:
        with open(self.path, "ab") as f:
            f.write((json.dumps(rec, ensure_ascii=False) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self.users[int(rec["user_id"])] = rec

    def rows(self) -> list[dict]:
        """Every version of every user: the long table written to ``memories.parquet``."""
        return [dict(v, user_id=u) for u, rec in sorted(self.users.items()) for v in rec["versions"]]


# ---------------------------------------------------------------------------------------------- fast thinking


@dataclass
class RankStats:
    """What the ranking parser saw: answers, unparsable ones, duplicates dropped, candidates appended as missing."""

    answers: int = 0
    unparsed: int = 0
    duplicates: int = 0
    missing: int = 0
    constrained: int = 0

    def add(self, other: RankStats) -> None:
        for k in ("answers", "unparsed", "duplicates", "missing", "constrained"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class RankOut:
    """One ranking: ``order`` = candidate positions best first (every candidate once), the raw ``text``, the thought,
    and the parse outcome (``ok`` False = nothing parsed: the given order stands)."""

    order: list[int]
    text: str
    thought: str
    ok: bool
    named: int
    duplicates: int = 0
    missing: int = 0


def rank_prompt(domain: str, mem_fields: dict, candidates: Sequence[dict]) -> list[dict[str, str]]:
    """Tab. 1: the interactive ranking prompt."""
    return render("starec_rank", domain, **mem_fields, candidates=list(candidates))


def can_constrain(llm) -> bool:
    return "constraint:ranking" in getattr(llm, "supports", frozenset())


def rank_constraint(candidates: Sequence[dict], max_new_tokens: int, explain: bool = True):
    """The ranking constraint over ``candidates`` (dicts with a title), or None where titles repeat or span lines."""
    titles = [str(c["title"]) for c in candidates]
    if len(set(titles)) < len(titles) or any(not t.strip() or "\n" in t for t in titles):
        return None   # the constraint needs distinct one-line titles; the parser handles the rest
    return task_spec("starec_rank", candidates=dict(enumerate(titles)), max_new_tokens=max_new_tokens,
                     explain=explain).constraint


def parse_rank(text: str, candidates: Sequence[dict]) -> RankOut:
    titles = {i: str(c["title"]) for i, c in enumerate(candidates)}
    thought, _ = parsers.split_think(text)
    try:
        r = parsers.parse_ranking(text, titles)
    except parsers.ParseError:
        return RankOut(list(range(len(candidates))), text, thought, False, 0)
    return RankOut(list(r.ids), text, thought, True, r.matched, len(r.duplicates), len(r.missing))


def rank(llm, prompts: Sequence[Any], candidates: Sequence[Sequence[dict]], *, adapter=None, max_new_tokens: int,
         temperature: float = 0.0, seed: int = 0, n: int = 1, constrain: bool = True,
         stats: RankStats | None = None) -> list[list[RankOut]]:
    """Fast thinking for a batch: ``n`` rankings per prompt (n > 1 only for Best of N)."""
    cons = [(rank_constraint(c, max_new_tokens) if constrain and can_constrain(llm) else None) for c in candidates]
    gens = llm.generate(list(prompts), n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                        adapter=adapter, constraint=cons if any(c is not None for c in cons) else None)
    out = []
    for g, cands, con in zip(gens, candidates, cons, strict=True):
        outs = [parse_rank(t, cands) for t in g.texts]
        if stats is not None:
            for o in outs:
                stats.answers += 1
                stats.constrained += con is not None
                stats.unparsed += not o.ok
                stats.duplicates += o.duplicates
                stats.missing += o.missing
        out.append(outs)
    return out


def position_of(order: Sequence[int], pos: int) -> int:
    """1-based rank of candidate position ``pos`` in ``order``."""
    return list(order).index(pos) + 1


def ndcg_single(rank_1based: int | None, k: int = 10) -> float:
    """NDCG@k of a list with one relevant item at ``rank_1based`` (None = not ranked)."""
    if rank_1based is None or rank_1based > k:
        return 0.0
    return 1.0 / math.log2(rank_1based + 1)


# ---------------------------------------------------------------------------------------------- slow thinking


def memory_prompt(domain: str, mem: Memory, target: dict, prediction: str, feedback: str,
                  history_len: int) -> list[dict[str, str]]:
    """Tab. 2: the memory-update (self-reflection) prompt."""
    return render("starec_memory", domain, **mem.fields(history_len), target=target, prediction=prediction,
                  feedback=feedback)


def memory_constraint(llm, max_new_tokens: int):
    if "constraint:regex" not in getattr(llm, "supports", frozenset()):
        return None
    return task_spec("starec_memory", max_new_tokens=max_new_tokens).constraint


def prediction_text(rank_1based: int, n: int) -> tuple[bool, str]:
    liked = rank_1based <= (n + 1) // 2
    return liked, (f"Predicted {'Liked' if liked else 'Disliked'} (ranked {rank_1based} of {n} candidates)")


def feedback_text(item: dict) -> str:
    r = item.get("rating")
    return ("Liked" if item["liked"] else "Disliked") + (f" (rated {r} out of 5)" if r is not None else "")


@dataclass
class ReplayCase:
    """One user to replay: the starting memory and the interactions to walk, each with its candidate list
    (``cands`` item fields, the real item at ``pos``)."""

    memory: Memory
    steps: list[dict]   # {"item": item fields with liked/rating, "cands": [...], "pos": int}


@dataclass
class ReplayResult:
    memory: Memory
    versions: list[dict]
    rank_samples: list[dict] = field(default_factory=list)     # ranking prompt, answer, target (SFT / GRPO data)
    memory_samples: list[dict] = field(default_factory=list)   # reflection prompt, answer, follow-up ranking


def replay(llm, domain: str, cases: Sequence[ReplayCase], *, reflect: bool, adapter=None, history_len: int,
           rank_tokens: int, memory_tokens: int, seed: int, constrain: bool = True, temperature: float = 0.0,
           stats: RankStats | None = None, reflect_stats: parsers.ParseStats | None = None) -> list[ReplayResult]:
    """§4.1.3 for a batch of users, step by step (users in a batch advance together; each step is one batched
    ranking call and one batched reflection call for the users whose prediction missed)."""
    res = [ReplayResult(c.memory, [{"version": 0, "text": c.memory.description, "cause": "init",
                                    "history": len(c.memory.history)}]) for c in cases]
    n_steps = max((len(c.steps) for c in cases), default=0)
    for t in range(n_steps):
        live = [i for i, c in enumerate(cases) if t < len(c.steps)]
        prompts = [rank_prompt(domain, res[i].memory.fields(history_len), cases[i].steps[t]["cands"]) for i in live]
        outs = rank(llm, prompts, [cases[i].steps[t]["cands"] for i in live], adapter=adapter,
                    max_new_tokens=rank_tokens, temperature=temperature, seed=seed + t, constrain=constrain,
                    stats=stats)
        todo = []
        for i, p, (o,) in zip(live, prompts, outs, strict=True):
            step = cases[i].steps[t]
            r = position_of(o.order, step["pos"]) if o.ok else None
            if r is None:   # unparsable ranking: no prediction, so no discrepancy to reflect on
                liked_pred, pred = None, "No prediction (the ranking could not be read)"
            else:
                liked_pred, pred = prediction_text(r, len(step["cands"]))
            res[i].rank_samples.append({"prompt": p, "completion": o.text, "target_pos": step["pos"],
                                        "candidates": [c["title"] for c in step["cands"]], "rank": r,
                                        "user_id": res[i].memory.user_id, "step": t})
            miss = liked_pred is not None and liked_pred != bool(step["item"]["liked"])
            step["_pred"], step["_rank"] = pred, r
            if reflect and miss:
                todo.append(i)
        new_desc: dict[int, tuple[str, str, Any]] = {}
        if todo:
            mprompts = [memory_prompt(domain, res[i].memory, cases[i].steps[t]["item"], cases[i].steps[t]["_pred"],
                                      feedback_text(cases[i].steps[t]["item"]), history_len) for i in todo]
            got = parsers.generate_parsed(llm, mprompts, parsers.parse_memory, max_attempts=2, adapter=adapter,
                                          max_new_tokens=memory_tokens, seed=seed + 1000 + t,
                                          constraint=memory_constraint(llm, memory_tokens), stats=reflect_stats)
            for i, p, g in zip(todo, mprompts, got, strict=True):
                new_desc[i] = (g.value if g.ok else None, g.text, p)
        for i in live:
            step, m = cases[i].steps[t], res[i].memory
            cause = "append"
            if i in new_desc:
                text, raw, p = new_desc[i]
                nxt = cases[i].steps[t + 1] if t + 1 < len(cases[i].steps) else None
                res[i].memory_samples.append({"prompt": p, "completion": raw, "ok": text is not None,
                                              "user_id": m.user_id, "step": t, "followup": nxt})
                if text is not None:
                    m.description, cause = text, "reflect"
                else:
                    cause = "reflect_failed"
            m.history.append(step["item"])
            m.version += 1
            if i in new_desc and res[i].memory_samples[-1]["followup"] is not None:
                res[i].memory_samples[-1]["followup"] = followup_case(res[i].memory_samples[-1]["followup"], m,
                                                                      history_len)
            res[i].versions.append({"version": m.version, "text": m.description, "cause": cause,
                                    "history": len(m.history), "item": step["item"]["title"],
                                    "prediction": step["_pred"], "rank": step["_rank"],
                                    "feedback": feedback_text(step["item"])})
    return res


def followup_case(sample: dict, memory: Memory, history_len: int) -> dict:
    """The follow-up ranking a rewritten memory is judged by (§4.2.2 indirect reward): the user's next replay
    step (or final list) with the history as it stands then, as the fields to re-render ``starec_rank`` with
    another description."""
    return {"user": memory.user, "history": list(memory.history[-history_len:]),
            "candidates": sample["cands"], "target_pos": sample["pos"]}


# ---------------------------------------------------------------------------------------------- SFT anchoring

SCREEN_REASONS = ("no_ranking", "missing_cot", "broken_format", "no_positive", "low_ndcg")


def screen(text: str, candidates: Sequence[str], target_pos: int, ndcg_threshold: float) -> str | None:
    """§4.2.1 screening of one teacher ranking: the first failed check (:data:`SCREEN_REASONS`) or None."""
    thought, _ = parsers.split_think(text)
    try:
        r = parsers.parse_ranking(text, dict(enumerate(candidates)))
    except parsers.ParseError:
        return "no_ranking"
    if not thought.strip():
        return "missing_cot"
    if r.duplicates or r.unmatched_lines or r.missing:
        return "broken_format"
    named = r.ids[:r.matched]
    if target_pos not in named:
        return "no_positive"
    if ndcg_single(named.index(target_pos) + 1, 10) < ndcg_threshold:
        return "low_ndcg"
    return None


def screen_memory(text: str) -> str | None:
    thought, _ = parsers.split_think(text)
    try:
        parsers.parse_memory(text)
    except parsers.ParseError:
        return "no_preference"
    return None if thought.strip() else "missing_cot"


_RETHINK = {
    "no_ranking": "your answer has no numbered ranking of the candidates",
    "missing_cot": "your answer has no reasoning inside <think> </think>",
    "broken_format": "your ranking repeats, leaves out or misnames candidates; rank every candidate exactly once",
    "no_positive": "your ranking leaves out the item the user actually chose next",
    "low_ndcg": "the item the user actually chose next is ranked at position {rank} in your list",
    "no_preference": "your answer has no 'Updated User description:' line",
}


def augment_prompt(prompt: list[dict], answer: str, reason: str, rank_1based: int | None = None) -> list[dict]:
    """§4.2.1 "prompt error + rethink": the original chat, the flawed answer, and a user turn naming the error."""
    msg = _RETHINK[reason].format(rank=rank_1based)
    return [*prompt, {"role": "assistant", "content": answer},
            {"role": "user", "content": f"Prompt error: {msg}. Rethink the user's preferences step by step and "
                                        f"answer again in exactly the required format."}]


def answer_rank(text: str, candidates: Sequence[str], target_pos: int) -> int | None:
    try:
        r = parsers.parse_ranking(text, dict(enumerate(candidates)))
    except parsers.ParseError:
        return None
    named = r.ids[:r.matched]
    return named.index(target_pos) + 1 if target_pos in named else None


# ---------------------------------------------------------------------------------------------- LLMRank


def llmrank_prompt(history: Sequence[dict], candidates: Sequence[dict]) -> list[dict[str, str]]:
    """LLMRank's zero-shot sequential ranking prompt (Hou et al., ECIR'24, the "sequential prompting" variant):
    the history in order, then the candidates, then the instruction; numbered output as STARec's parser reads."""
    hist = "\n".join(f"{i}. {h['title']}" for i, h in enumerate(history, start=1))
    cands = "\n".join(f"[{i}] {c['title']}" for i, c in enumerate(candidates, start=1))
    return [{"role": "user", "content":
             f"I've watched the following movies in the past in order:\n{hist}\n\nNow there are {len(candidates)} "
             f"candidate movies that I can watch next:\n{cands}\n\nPlease rank these {len(candidates)} movies by "
             f"measuring the possibilities that I would like to watch next most, according to my watching history. "
             f"Answer with one movie per line: \"1. Title - reason\"."}]


# ---------------------------------------------------------------------------------------------- AgentCF


def _item_text(f: dict) -> str:
    return f"{f['title']}" + (f", {f['categories']}" if f.get("categories") else "")


def agentcf_choice_prompt(user_mem: str, a: dict, b: dict, a_mem: str, b_mem: str) -> list[dict[str, str]]:
    """AgentCF (Zhang et al., WWW'24) autonomous interaction: the user agent picks one of two items from its memory
    and the two item agents' memories."""
    return [{"role": "system", "content": "You are a user of a movie platform. Your self-description is below."},
            {"role": "user", "content":
             f"My self-description: {user_mem}\n\nTwo movies:\nA. {_item_text(a)}. {a_mem}\nB. {_item_text(b)}. "
             f"{b_mem}\n\nWhich of the two would I watch? Answer A or B."}]


def agentcf_reflect_prompt(user_mem: str, chosen: dict, other: dict, chosen_mem: str, other_mem: str,
                           picked_wrong: bool) -> list[dict[str, str]]:
    """AgentCF collaborative reflection: the user really chose ``chosen`` over ``other``; the user agent rewrites
    its self-description and both item agents rewrite theirs."""
    why = ("You predicted the other movie, which was wrong." if picked_wrong else
           "You predicted it correctly; strengthen what explains it.")
    return [{"role": "system", "content": "You help a user agent and two movie agents learn from a real choice."},
            {"role": "user", "content":
             f"User self-description: {user_mem}\nMovie the user really watched: {_item_text(chosen)}. {chosen_mem}\n"
             f"Movie the user did not choose: {_item_text(other)}. {other_mem}\n{why}\n\nWrite three short lines:\n"
             f"User memory: <updated self-description of the user's tastes>\n"
             f"Chosen item memory: <what kind of users like the watched movie>\n"
             f"Other item memory: <what kind of users like the other movie>"}]


def agentcf_reflect_spec(max_new_tokens: int):
    parts = [Lit("User memory: "), Text("user", line=True), Lit("\nChosen item memory: "), Text("chosen", line=True),
             Lit("\nOther item memory: "), Text("other", line=True)]
    return _spec("agentcf_reflect", [parts], parse_agentcf_reflection, max_new_tokens)


_CF = re.compile(r"user memory\s*:\s*(.+?)\s*\n\s*chosen item memory\s*:\s*(.+?)\s*\n\s*other item memory\s*:\s*(.+)",
                 re.I | re.S)


def parse_agentcf_reflection(text: str) -> tuple[str, str, str]:
    _, answer = parsers.split_think(text)
    m = _CF.search(answer)
    if not m or not all(g.strip() for g in m.groups()):
        raise parsers.ParseError(f"no 'User memory / Chosen item memory / Other item memory' lines in {answer[:80]!r}")
    return m.group(1).strip(), m.group(2).strip(), m.group(3).strip().split("\n")[0].strip()


def agentcf_rank_prompt(user_mem: str, history: Sequence[dict], candidates: Sequence[dict],
                        item_mems: Sequence[str]) -> list[dict[str, str]]:
    """AgentCF inference (its basic ranking with the history appended, AgentCF-H): the user agent ranks the
    candidates from its memory and each candidate agent's memory."""
    hist = ", ".join(h["title"] for h in history)
    cands = "\n".join(f"- {c['title']}: {m}" for c, m in zip(candidates, item_mems, strict=True))
    return [{"role": "system", "content": "You are a user of a movie platform ranking movies for yourself."},
            {"role": "user", "content":
             f"My self-description: {user_mem}\nI recently watched: {hist}\n\nCandidate movies and what their "
             f"viewers are like:\n{cands}\n\nThink inside <think> </think>, then rank ALL candidates, one per line:\n"
             f"1. [Movie Title] - [Brief Explanation]"}]


def choice_constraint(llm):
    return Choice(["A", "B"]) if "constraint:choice" in getattr(llm, "supports", frozenset()) else None


def parse_choice(text: str) -> str:
    _, answer = parsers.split_think(text)
    m = re.search(r"\b([AB])\b", answer)
    if not m:
        raise parsers.ParseError(f"no A/B in {answer[:40]!r}")
    return m.group(1)


# ---------------------------------------------------------------------------------------------- results


def scores_from_order(order: Sequence[int]) -> np.ndarray:
    """Candidate scores (higher = better) from a ranking: −position."""
    s = np.empty(len(order), dtype=np.float64)
    s[np.asarray(order)] = -np.arange(len(order), dtype=np.float64)
    return s


def results_table(res, variants: Sequence[str], ks: Sequence[int] = (1, 5, 10, 20),
                  titles: dict[str, str] | None = None) -> str:
    """STARec Tab. 4/5 shape: NDCG@1/5/10/20 (×100) with the 95% user-bootstrap interval, one row per variant."""
    val = {(r.variant, r.metric): r for r in res.rows if r.subgroup == "all"}
    head = "| method | what it is | " + " | ".join(f"NDCG@{k}" for k in ks) + " |"
    lines = [head, "|" + "---|" * (len(ks) + 2)]
    for v in variants:
        cells = []
        for k in ks:
            r = val.get((v, f"ndcg@{k}"))
            if r is None or r.value is None:
                cells.append("–")
                continue
            ci = "" if r.ci_low is None else f" [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]"
            cells.append(f"{100 * r.value:.2f}{ci}")
        lines.append(f"| {v} | {(titles or {}).get(v, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
