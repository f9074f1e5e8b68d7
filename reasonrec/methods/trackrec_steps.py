"""The LLM steps of TrackRec (Xu et al. 2025): prompts, Algorithm 1 (multiple-sampling feedback), the
chosen / rejected construction of eq. 2, greedy CoTs for Rec-tuning and V as a recommender.

- :func:`feedback_rewards` is eq. 1 and :func:`build_preferences` eq. 2; both are plain functions of numbers and
  texts (no model), so ties and all-equal groups are tested on fixed probabilities.
- :func:`sample_feedback` is Algorithm 1's loop: G samples N CoTs per sample (one ``generate`` call with
  ``n=N``; the transformers backend runs them as N rows of one batch, each re-reading the prompt: it does not share
  the prompt's KV cache yet), V scores each CoT with ``choice_probs`` on the recommendation prompt (one forward
  pass, no generation).

Every call goes through the run's generation cache (``CachedLLM``), which commits per chunk: a killed run resumes
without sampling a committed CoT again.

Not copied from the public code: it applies ``exp`` to values that are already probabilities, tests
``'Yes' or 'yes' in a`` (always true) and hard-codes token ids. Here V's score is
p(Yes) / (p(Yes) + p(No)) from the LLM interface, whose choice tokens come from the tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..llm.prompts import render


def cot_prompt(domain: str, fields: dict[str, Any]) -> str:
    """prompt^CoT of Fig. 4 (the user's history only: the target and label never reach G)."""
    return render("trackrec_cot", domain, history=fields["history"], like_threshold=fields["like_threshold"])[-1][
        "content"]


def rec_prompt(domain: str, fields: dict[str, Any], summary: str | None) -> str:
    """prompt^Rec of Fig. 4; ``summary=None`` is the TALLRec / zero-shot prompt without a CoT."""
    return render("trackrec_rec", domain, history=fields["history"], target=fields["target"],
                  like_threshold=fields["like_threshold"], summary=summary)[-1]["content"]


# ---------------------------------------------------------------------------------------------- eq. 1-2

def feedback_rewards(p_yes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Eq. 1: r_ij = p^T_ij if y_i = Yes else p^F_ij = 1 - p^T_ij.

    ``p_yes`` (S, N) is V's p(Yes) / (p(Yes) + p(No)) per sample and CoT, ``labels`` (S,) are 0/1.
    """
    p_yes = np.asarray(p_yes, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64).reshape(-1, 1)
    return y * p_yes + (1.0 - y) * (1.0 - p_yes)


@dataclass
class Preferences:
    """Eq. 2 over all groups: one row per kept group, and what was dropped, counted.

    ``rows``: ``{"index", "chosen", "rejected": [...], "chosen_reward", "rejected_rewards": [...]}``;
    ``skipped_all_equal``: groups whose N rewards are equal (no preference to learn);
    ``tied_best``: CoTs that tie the best reward (neither chosen nor rejected);
    ``duplicate_texts``: rejected CoTs dropped because their text equals the chosen one (DPO would push one
    sequence up and down at once).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    groups: int = 0
    skipped_all_equal: int = 0
    skipped_no_rejected: int = 0
    tied_best: int = 0
    duplicate_texts: int = 0

    def stats(self) -> dict[str, float]:
        chosen = [r["chosen_reward"] for r in self.rows]
        rejected = [x for r in self.rows for x in r["rejected_rewards"]]
        skipped = self.skipped_all_equal + self.skipped_no_rejected
        return {"groups": self.groups, "kept": len(self.rows), "skipped_all_equal": self.skipped_all_equal,
                "skipped_no_rejected": self.skipped_no_rejected, "tied_best": self.tied_best,
                "duplicate_texts": self.duplicate_texts, "skipped_share": skipped / max(self.groups, 1),
                "reward_chosen": float(np.mean(chosen)) if chosen else None,
                "reward_rejected": float(np.mean(rejected)) if rejected else None}


def build_preferences(rewards: np.ndarray, texts: Sequence[Sequence[str]], tol: float = 1e-6) -> Preferences:
    """Eq. 2: per group, Cot_p = the CoT of maximal reward, C^ε = the others.

    DEVIATION (the paper says nothing on ties): a group whose rewards all lie within ``tol`` of each other is
    skipped (it carries no preference); when several CoTs tie the best reward, the first is chosen and the other
    tied ones are left out of C^ε (they are not worse), counted in ``tied_best``. Ties are by value, so the
    choice depends only on the sample order (seeded), never on dict order.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    out = Preferences()
    for i, (row, group) in enumerate(zip(rewards, texts, strict=True)):
        out.groups += 1
        if row.max() - row.min() <= tol:
            out.skipped_all_equal += 1
            continue
        best = int(np.argmax(row))   # np.argmax returns the first maximum
        rejected, rejected_r = [], []
        for j, r in enumerate(row):
            if j == best:
                continue
            if row[best] - r <= tol:
                out.tied_best += 1
            elif group[j] == group[best]:
                out.duplicate_texts += 1
            else:
                rejected.append(group[j])
                rejected_r.append(float(r))
        if not rejected:
            out.skipped_no_rejected += 1
            continue
        out.rows.append({"index": i, "chosen": group[best], "rejected": rejected,
                         "chosen_reward": float(row[best]), "rejected_rewards": rejected_r})
    return out


# ---------------------------------------------------------------------------------------------- LLM calls

@dataclass
class Sampling:
    """G's sampling settings (§4.1.4: N 10, t 1.0, top_p 0.9) and the CoT length cap."""

    n: int = 10
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0


@dataclass
class Feedback:
    """Algorithm 1's outputs for S samples: the N CoTs, their token counts, V's p(Yes) and the rewards."""

    texts: list[list[str]]
    tokens: np.ndarray       # (S, N)
    p_yes: np.ndarray        # (S, N)
    rewards: np.ndarray      # (S, N)


def sample_feedback(llm, domain: str, fields: Sequence[dict[str, Any]], labels: Sequence[int], *,
                    generator: str | None, validator: str | None, sampling: Sampling) -> Feedback:
    """Algorithm 1: N CoTs per sample from G, each scored by V on prompt^Rec with that CoT as the summary."""
    prompts = [cot_prompt(domain, f) for f in fields]
    gens = llm.generate(prompts, n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                        max_new_tokens=sampling.max_new_tokens, seed=sampling.seed, adapter=generator)
    texts = [[t.strip() for t in g.texts] for g in gens]
    flat = [rec_prompt(domain, f, t) for f, group in zip(fields, texts, strict=True) for t in group]
    p_yes = v_scores(llm, flat, validator).reshape(len(fields), sampling.n)
    tokens = np.array([g.completion_tokens for g in gens], dtype=np.int64).reshape(len(fields), sampling.n)
    return Feedback(texts, tokens, p_yes, feedback_rewards(p_yes, np.asarray(labels)))


def greedy_cots(llm, domain: str, fields: Sequence[dict[str, Any]], *, generator: str | None,
                max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> tuple[list[str], list[int]]:
    """§3.3 / §3.4: G's greedy CoT per sample (for Rec-tuning, V's evaluation and the CTR field);
    ``temperature`` > 0 samples one seeded CoT instead (smoke runs on a random model, whose argmax is a special
    token that decodes to nothing)."""
    gens = llm.generate([cot_prompt(domain, f) for f in fields], n=1, temperature=temperature, seed=seed,
                        max_new_tokens=max_new_tokens, adapter=generator)
    return [g.text.strip() for g in gens], [int(g.completion_tokens[0]) for g in gens]


def v_scores(llm, prompts: Sequence[str], validator: str | None) -> np.ndarray:
    """V's p(Yes) / (p(Yes) + p(No)) at the first answer token (one forward pass per prompt)."""
    if not prompts:
        return np.zeros(0)
    return llm.choice_probs(list(prompts), ("Yes", "No"), adapter=validator)[:, 0]


def teacher_cots(teacher, domain: str, fields: Sequence[dict[str, Any]], *, max_new_tokens: int,
                 seed: int, temperature: float = 0.0) -> list[str]:
    """§3.5: the teacher's RecCoT per distillation sample (greedy unless ``temperature`` > 0)."""
    gens = teacher.generate([cot_prompt(domain, f) for f in fields], n=1, temperature=temperature,
                            max_new_tokens=max_new_tokens, seed=seed)
    return [g.text.strip() for g in gens]


def user_bootstrap_auc(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> list[float | None]:
    """Percentile interval of the AUC over user resamples (samples of one user are not independent).
    Replicates with one class only are dropped."""
    from ..eval.metrics import auc

    users = np.unique(user_ids)
    rows = {u: np.flatnonzero(user_ids == u) for u in users}
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        idx = np.concatenate([rows[u] for u in rng.choice(users, size=len(users), replace=True)])
        if 0 < labels[idx].sum() < len(idx):
            reps.append(auc(labels[idx], scores[idx]))
    if not reps:
        return [None, None]
    lo = (1 - confidence) / 2
    return [float(np.quantile(reps, lo)), float(np.quantile(reps, 1 - lo))]



def results_table(summary: dict) -> str:
    """One line per arm × round and per baseline: V's AUC [95% user-bootstrap interval] / ACC, each backbone's
    AUC / ACC / LogLoss with the CoT field, rewards of chosen vs rejected CoTs, groups skipped, CoT tokens."""
    def f(x, d=4):
        return "" if x is None else f"{x:.{d}f}"

    lines = ["| arm | round | V AUC [95% CI] | V ACC | CTR AUC / ACC / LogLoss | r chosen | r rejected | skipped "
             "| CoT tokens |", "|---|---|---|---|---|---|---|---|---|"]
    rows = [r for arm in summary["arms"].values() for r in arm]
    rows += [{"arm": f"baseline:{k}", "round": "", **b} for k, b in summary["baselines"].items()]
    for r in rows:
        ci = r.get("v_auc_ci") or [None, None]
        v = "" if r.get("v_auc") is None else f"{r['v_auc']:.4f} [{f(ci[0], 3)}, {f(ci[1], 3)}]"
        ctr = "; ".join(f"{b} {m['auc']:.4f} / {m['acc']:.4f} / {m['logloss']:.4f}" for b, m in
                        r.get("ctr", {}).items())
        lines.append(f"| {r['arm']} | {r['round']} | {v} | {f(r.get('v_acc'))} | {ctr} | {f(r.get('reward_chosen'))} "
                     f"| {f(r.get('reward_rejected'))} | {f(r.get('skipped_share'), 2)} | {f(r.get('cot_tokens'), 1)} |")
    return "\n".join(lines + ["", f"Samples: {json.dumps(summary['data'])}"]) + "\n"
