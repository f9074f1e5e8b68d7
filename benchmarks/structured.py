"""Structured output on the bundled SmolLM2-135M: parse success and tokens/s without vs with constraints.

Same prompts, same model, greedy, one run per backend (transformers, llama.cpp):

    R4ec construction   --n-r4ec prompts (half user r4ec_user_reason, half item r4ec_item_reason, both rendered with
                        the target as Algorithm 1's construction prompts), real ML-100K histories
    STARec ranking      --n-rank starec_rank prompts with 20 candidates each (the user's next rated movie and 19
                        movies the user never rated), user profile from u.user

Each prompt runs unconstrained and then constrained to its task's format (reasonrec.llm.specs). Reported per task
and backend: parse success (the task's own tolerant parser), strict format (the R4ec answer matches the format in
full; the ranking names every candidate exactly once), and tokens/s; the constraint's overhead is the ratio of
tokens/s without to tokens/s with. Targets (issue 13): 100 % well-formed with constraints, overhead <= 1.2x on
llama.cpp.

    python benchmarks/structured.py --data-dir /path/to/ml-100k [--n-r4ec 64 --n-rank 64 --threads 1]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import time
from pathlib import Path

import pandas as pd

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def load(data_dir: Path):
    items = pd.read_csv(data_dir / "u.item", sep="|", header=None, encoding="latin-1")
    cats = items[list(range(5, 24))].to_numpy()
    titles = dict(zip(items[0], items[1], strict=True))
    genres = {i: ", ".join(g for g, on in zip(GENRES, row, strict=True) if on) for i, row in zip(items[0], cats,
                                                                                                  strict=True)}
    data = pd.read_csv(data_dir / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "ts"])
    users = pd.read_csv(data_dir / "u.user", sep="|", header=None, names=["user_id", "age", "gender", "occupation",
                                                                          "zip"]).set_index("user_id")
    return titles, genres, data.sort_values(["user_id", "ts"]), users


def r4ec_prompts(titles, genres, data, n: int, history: int = 10):
    """Construction prompts: users (history → target + verdict), items (liked/disliked users → target user)."""
    from reasonrec.llm.prompts import render

    out = []
    by_user = {u: g for u, g in data.groupby("user_id", sort=True)}
    for g in list(by_user.values())[: n // 2]:
        hist = [{"title": titles[i], "rating": int(r)} for i, r in zip(g.item_id[:history], g.rating[:history],
                                                                       strict=True)]
        target = {"title": titles[int(g.item_id.iloc[history])]}
        out.append(("r4ec_user_reason", render("r4ec_user_reason", "movie", history=hist, target=target,
                                               like_threshold=3)))
    popular = data.item_id.value_counts().index[: n - n // 2]
    for i in popular:
        rated = data[data.item_id == i]
        pos = rated[rated.rating > 3].user_id[:3]
        neg = rated[rated.rating <= 3].user_id[:3]

        def titles_of(user):
            return [titles[j] for j in by_user[user].item_id[:5]]

        target_user = int(rated.user_id.iloc[-1])
        th = [{"title": titles[j], "rating": int(r)} for j, r in zip(by_user[target_user].item_id[:history],
                                                                     by_user[target_user].rating[:history],
                                                                     strict=True)]
        target = {"title": titles[int(i)], "year": None, "categories": genres[int(i)], "description": ""}
        out.append(("r4ec_item_reason", render("r4ec_item_reason", "movie", target=target, like_threshold=3,
                                               pos_histories=[titles_of(v) for v in pos],
                                               neg_histories=[titles_of(v) for v in neg], target_history=th)))
    return out


def rank_prompts(titles, genres, data, users, n: int, history: int = 10, n_candidates: int = 20, seed: int = 0):
    from reasonrec.llm.prompts import render

    rng = random.Random(seed)
    all_items = sorted(titles)
    out = []
    for u, g in data.groupby("user_id", sort=True):
        if len(out) == n:
            break
        seen = set(g.item_id)
        nxt = int(g.item_id.iloc[history])
        cands = [nxt] + rng.sample([i for i in all_items if i not in seen], n_candidates - 1)
        rng.shuffle(cands)
        hist = [{"title": titles[i], "year": None, "categories": genres[i], "liked": bool(r > 3)}
                for i, r in zip(g.item_id[:history], g.rating[:history], strict=True)]
        user = users.loc[u]
        fields = {"user": {"gender": user.gender, "age": int(user.age), "occupation": user.occupation},
                  "history": hist, "memory": None,
                  "candidates": [{"title": titles[c], "year": None, "categories": genres[c], "item_id": c}
                                 for c in cands]}
        out.append((render("starec_rank", "movie", **fields), {c: titles[c] for c in cands}))
    return out


def run(llm, prompts, constraints, max_new_tokens: int):
    start = time.perf_counter()
    gens = llm.generate(prompts, max_new_tokens=max_new_tokens, constraint=constraints)
    secs = time.perf_counter() - start
    return secs, sum(g.completion_tokens[0] for g in gens), [g.text for g in gens]


def score_r4ec(specs, texts):
    ok = strict = 0
    for sp, t in zip(specs, texts, strict=True):
        try:
            sp.parse(t)
            ok += 1
        except Exception:  # ParseError; any parser failure counts as malformed
            pass
        strict += bool(re.fullmatch(sp.constraint.regex(), t))
    return ok, strict


def score_rank(specs, texts, n_candidates: int):
    ok = strict = 0
    for sp, t in zip(specs, texts, strict=True):
        try:
            r = sp.parse(t)
            ok += 1
            strict += r.matched == n_candidates and not r.duplicates and not r.unmatched_lines
        except Exception:
            pass
    return ok, strict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("REASONREC_DATA_DIR"))
    ap.add_argument("--n-r4ec", type=int, default=64, help="R4ec construction prompts (half user, half item)")
    ap.add_argument("--n-rank", type=int, default=64, help="STARec ranking prompts (20 candidates each)")
    ap.add_argument("--r4ec-tokens", type=int, default=128, help="max_new_tokens of the R4ec answers")
    ap.add_argument("--rank-tokens", type=int, default=480, help="max_new_tokens of the rankings")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backends", default="transformers,llamacpp")
    args = ap.parse_args()
    if args.data_dir is None or not (Path(args.data_dir) / "u.data").exists():
        raise SystemExit("pass --data-dir pointing at the MovieLens-100K folder (u.data, u.item, u.user)")
    import torch

    from reasonrec.llm.base import load_llm
    from reasonrec.llm.specs import task_spec

    torch.set_num_threads(args.threads)
    titles, genres, data, users = load(Path(args.data_dir))
    r4ec = r4ec_prompts(titles, genres, data, args.n_r4ec)
    ranks = rank_prompts(titles, genres, data, users, args.n_rank)
    r4ec_specs = [task_spec(task, "movie", max_new_tokens=args.r4ec_tokens) for task, _ in r4ec]
    rank_specs = [task_spec("starec_rank", "movie", max_new_tokens=args.rank_tokens, candidates=c) for _, c in ranks]
    print(f"{len(r4ec)} R4ec construction prompts ({args.r4ec_tokens} tokens), {len(ranks)} STARec ranking "
          f"prompts (20 candidates, {args.rank_tokens} tokens); SmolLM2-135M-Instruct, greedy, threads={args.threads}; "
          f"load average at start {tuple(round(x, 1) for x in os.getloadavg())}")
    rows = []
    for backend in filter(None, args.backends.split(",")):
        if backend == "llamacpp":
            from reasonrec.llm.llamacpp import gguf_available

            if not gguf_available():
                print("llama.cpp: skipped (llama-cpp-python not installed)")
                continue
            llm = load_llm("smollm2-135m", backend="llamacpp", n_threads=args.threads, n_ctx=4096, parallel=16)
        else:
            llm = load_llm("smollm2-135m", batch_size=16, threads=args.threads)
        llm.generate(["warm up"], max_new_tokens=2, constraint=r4ec_specs[0].constraint)  # grammar vocabulary
        for task, prompts, specs, tokens, score in (
                ("R4ec construction", [p for _, p in r4ec], r4ec_specs, args.r4ec_tokens, score_r4ec),
                ("STARec ranking", [p for p, _ in ranks], rank_specs, args.rank_tokens,
                 lambda s, t: score_rank(s, t, 20))):
            if not prompts:
                continue
            for label, constraints in (("unconstrained", None), ("constrained", [s.constraint for s in specs])):
                secs, toks, texts = run(llm, prompts, constraints, tokens)
                ok, strict = score(specs, texts)
                rows.append((backend, task, label, len(prompts), ok, strict, toks, secs))
                print(f"  {backend:12s} {task:18s} {label:13s} parsed {ok:3d}/{len(prompts)}  strict {strict:3d}/"
                      f"{len(prompts)}  {toks:6d} tokens {secs:7.1f} s {toks / secs:6.1f} tok/s  load "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
                if label == "constrained" and texts:
                    print("    e.g.", repr(texts[0][:300]))
        del llm
    print(f"\n{'backend':12s} {'task':18s} {'parsed w/o':>10s} {'parsed with':>11s} {'strict w/o':>10s} "
          f"{'strict with':>11s} {'tok/s w/o':>9s} {'tok/s with':>10s} {'overhead':>9s}")
    for i in range(0, len(rows), 2):
        (b, t, _, n, ok0, st0, tk0, s0), (_, _, _, _, ok1, st1, tk1, s1) = rows[i], rows[i + 1]
        r0, r1 = tk0 / s0, tk1 / s1
        print(f"{b:12s} {t:18s} {ok0:5d}/{n:<4d} {ok1:6d}/{n:<4d} {st0:5d}/{n:<4d} {st1:6d}/{n:<4d} {r0:9.1f} "
              f"{r1:10.1f} {r0 / r1:8.2f}x")
    print(f"load average at end {tuple(round(x, 1) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
