"""Per-call costs of TrackRec's LLM steps on one model, to size a config (configs/trackrec/ml100k-cpu.yaml).

Measures, on real ML-100K collm samples and TrackRec's prompts: seconds per sampled CoT (N samples of one prompt
in one call), per greedy CoT, per V score (``choice_probs``), per S-DPO group and per Rec-tuning sample. Prints
the load average, since the machine may be shared.

    python benchmarks/trackrec_costs.py --data-dir DIR [--model smollm2-135m] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--n", type=int, default=10)
    args = ap.parse_args()

    from reasonrec.data import load_tables, make_splits
    from reasonrec.llm.base import load_llm
    from reasonrec.llm.prompts import sample_fields
    from reasonrec.methods import trackrec_steps as steps
    from reasonrec.train.config import SDPOConfig, YesNoConfig
    from reasonrec.train.sdpo import train_sdpo
    from reasonrec.train.yesno import train_yesno

    print("load average at start:", os.getloadavg())
    tables = load_tables("ml-100k", args.data_dir)
    train = make_splits(tables, "collm", seed=0).train
    train = train[train["hist_item_ids"].map(len) >= 3].sample(48, random_state=0)
    items = {int(r["item_id"]): r for r in tables.items.to_dict("records")}
    fields = [sample_fields(r, items, None, max_history=10) for r in train.to_dict("records")]
    llm = load_llm(args.model, backend="transformers")
    out = {}

    t = time.perf_counter()
    fb = steps.sample_feedback(llm, "movie", fields[:4], train["label"].tolist()[:4], generator=None, validator=None,
                               sampling=steps.Sampling(n=args.n, max_new_tokens=args.tokens))
    out["feedback s/sample (N CoTs + N V scores)"] = (time.perf_counter() - t) / 4
    t = time.perf_counter()
    texts, tokens = steps.greedy_cots(llm, "movie", fields[4:20], generator=None, max_new_tokens=args.tokens)
    out["greedy CoT s/sample"] = (time.perf_counter() - t) / 16
    out["greedy CoT mean tokens"] = sum(tokens) / len(tokens)
    prompts = [steps.rec_prompt("movie", f, c) for f, c in zip(fields[4:20] * 3, texts * 3, strict=True)]
    t = time.perf_counter()
    steps.v_scores(llm, prompts, None)
    out["V score s/sample"] = (time.perf_counter() - t) / len(prompts)

    prefs = steps.build_preferences(fb.rewards, fb.texts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [{"prompt": steps.cot_prompt("movie", fields[p["index"]]), "chosen": p["chosen"],
                 "rejected": p["rejected"]} for p in prefs.rows]
        pd.DataFrame(rows).to_parquet(tmp / "p.parquet")
        lora = {"name": args.model, "lora": {"targets": "all-linear"}}
        cfg = SDPOConfig.model_validate({"model": lora, "data": {"train": tmp / "p.parquet"}, "training": {
            "output_dir": tmp / "sdpo", "per_device_train_batch_size": 1, "max_steps": len(rows),
            "max_length": 1024, "save_steps": 1000}})
        t = time.perf_counter()
        train_sdpo(cfg)
        out[f"S-DPO s/group (1 + {args.n - 1} CoTs)"] = (time.perf_counter() - t) / max(len(rows), 1)
        rec = pd.DataFrame({"prompt": prompts[:16], "label": train["label"].tolist()[4:20],
                            "answer": ["Yes." if y else "No." for y in train["label"].tolist()[4:20]]})
        rec.to_parquet(tmp / "r.parquet")
        cfg = YesNoConfig.model_validate({"model": lora, "data": {"train": tmp / "r.parquet"}, "reason_share": None,
                                          "training": {"output_dir": tmp / "yn", "per_device_train_batch_size": 4,
                                                       "max_steps": 4, "max_length": 1024, "save_steps": 1000}})
        t = time.perf_counter()
        train_yesno(cfg)
        out["Rec-tuning s/sample"] = (time.perf_counter() - t) / 16
    for k, v in out.items():
        print(f"{k}: {v:.3f}")
    print("load average at end:", os.getloadavg())


if __name__ == "__main__":
    main()
