"""Per-call costs of TrackRec's LLM steps, to size a config (configs/trackrec/ml100k-cpu.yaml).

On 16 real ML-100K collm samples with TrackRec's prompts (history of 10), batched: seconds per V score
(``choice_probs`` on prompt^Rec with a summary), per prompt^CoT prefill (a 1-token CoT) and per 32-token greedy
CoT, from which the decode cost per token and row follows. Prints the load average, since the machine may be shared.

    python benchmarks/trackrec_costs.py --data-dir DIR [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()

    from reasonrec.data import load_tables, make_splits
    from reasonrec.llm.base import load_llm
    from reasonrec.llm.prompts import sample_fields
    from reasonrec.methods import trackrec_steps as steps

    print("load average at start:", os.getloadavg(), flush=True)
    tables = load_tables("ml-100k", args.data_dir)
    train = make_splits(tables, "collm", seed=0).train
    train = train[train["hist_item_ids"].map(len) >= 3].sample(16, random_state=0)
    items = {int(r["item_id"]): r for r in tables.items.to_dict("records")}
    fields = [sample_fields(r, items, None, max_history=10) for r in train.to_dict("records")]
    llm = load_llm(args.model, backend="transformers")
    summary = "The user likes classic dramas and comedies with strong characters, and dislikes horror. " * 3
    rec = [steps.rec_prompt("movie", f, summary) for f in fields]
    cot_tokens = sum(len(llm.encode_prompt(steps.cot_prompt("movie", f))) for f in fields) / 16
    print(f"prompt tokens: prompt^Rec {sum(len(llm.encode_prompt(p)) for p in rec) / 16:.0f}, "
          f"prompt^CoT {cot_tokens:.0f}", flush=True)
    t = time.perf_counter()
    steps.v_scores(llm, rec, None)
    print(f"V score: {(time.perf_counter() - t) / 16:.3f} s/prompt", flush=True)
    t = time.perf_counter()
    steps.greedy_cots(llm, "movie", fields, generator=None, max_new_tokens=1)
    prefill = time.perf_counter() - t
    print(f"prompt^CoT prefill + 1 token: {prefill / 16:.3f} s/prompt", flush=True)
    t = time.perf_counter()
    steps.greedy_cots(llm, "movie", fields, generator=None, max_new_tokens=args.tokens)
    full = time.perf_counter() - t
    print(f"greedy CoT of {args.tokens} tokens: {full / 16:.3f} s/prompt; decode "
          f"{(full - prefill) / (16 * (args.tokens - 1)):.4f} s/token/row", flush=True)
    print("load average at end:", os.getloadavg())


if __name__ == "__main__":
    main()
