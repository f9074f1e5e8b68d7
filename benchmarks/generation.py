"""Generation throughput on the bundled SmolLM2-135M: naive HF vs our backends vs a cached rerun.

Same prompts, same model, one run: 32 ML-100K user-preference prompts (TrackRec's CoT prompt, Fig. 4, from
each user's first rated movies), greedy, up to 128 new tokens.

    naive HF       transformers ``model.generate`` one prompt at a time (batch 1), what a first script does
    transformers   this project's transformers backend (length-sorted left-padded batches)
    llama.cpp      this project's llama.cpp backend, --parallel sequences decoded together: on the bundled Q4_1
                   file as shipped, and on its default BF16 conversion (``requantize: auto``)
    cached rerun   the transformers run again through the SQLite generation cache (all hits)

Targets (issue 4): ≥ 5× naive HF tokens/s (llama.cpp or batched transformers backend); cached rerun ≤ 1 % of the first run's time.

    python benchmarks/generation.py --data-dir /path/to/ml-100k [--n-prompts 32 --max-new-tokens 128 --threads 1]

``--threads`` pins torch and llama.cpp to the same number of CPU threads; on a shared machine more threads than
free cores makes both spin-wait (see reasonrec/llm/llamacpp.py), so the default is 1.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

LLAMACPP = {"none": "reasonrec llama.cpp (Q4_1 as shipped)", "auto": "reasonrec llama.cpp (BF16, default)"}


def ml100k_prompts(data_dir: Path, n_prompts: int, history: int) -> list[list[dict[str, str]]]:
    from reasonrec.llm.prompts import render

    items = pd.read_csv(data_dir / "u.item", sep="|", header=None, encoding="latin-1", usecols=[0, 1],
                        names=["item_id", "title"]).set_index("item_id")["title"]
    data = pd.read_csv(data_dir / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "ts"])
    prompts = []
    for _, u in data.sort_values(["user_id", "ts"]).groupby("user_id", sort=True):
        # Varying history lengths (5..history) so that batching has real padding to deal with.
        k = 5 + len(prompts) % (history - 4)
        hist = [{"title": items[i], "rating": int(r)} for i, r in zip(u.item_id.iloc[:k], u.rating.iloc[:k],
                                                                       strict=True)]
        prompts.append(render("trackrec_cot", "movie", history=hist, like_threshold=3))
        if len(prompts) == n_prompts:
            break
    return prompts


def naive_hf(model_dir: Path, prompts, max_new_tokens: int) -> tuple[float, int, list[str]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts, tokens = [], 0
    start = time.perf_counter()
    for p in prompts:
        ids = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        tokens += len(new)
        texts.append(tok.decode(new, skip_special_tokens=True))
    return time.perf_counter() - start, tokens, texts


def timed(llm, prompts, max_new_tokens: int) -> tuple[float, int, list[str]]:
    start = time.perf_counter()
    gens = llm.generate(prompts, max_new_tokens=max_new_tokens)
    return time.perf_counter() - start, sum(g.completion_tokens[0] for g in gens), [g.text for g in gens]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("REASONREC_DATA_DIR"),
                    help="ML-100K folder (u.data, u.item); default $REASONREC_DATA_DIR")
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--history", type=int, default=15, help="longest history in a prompt")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=16, help="sequences the llama.cpp backend decodes together")
    ap.add_argument("--skip", default="", help="comma-separated: naive,llamacpp")
    args = ap.parse_args()
    if args.data_dir is None or not (Path(args.data_dir) / "u.data").exists():
        raise SystemExit("pass --data-dir pointing at the MovieLens-100K folder (u.data, u.item)")
    import torch

    from reasonrec.llm.base import load_llm
    from reasonrec.llm.bundled import smollm2_hf_dir
    from reasonrec.llm.cache import CachedLLM

    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    prompts = ml100k_prompts(Path(args.data_dir), args.n_prompts, args.history)
    print(f"{len(prompts)} ML-100K TrackRec CoT prompts, greedy, max_new_tokens={args.max_new_tokens}, "
          f"threads={args.threads}, SmolLM2-135M-Instruct")
    rows = {}
    if "naive" not in skip:
        rows["naive HF (batch 1)"] = naive_hf(smollm2_hf_dir(), prompts, args.max_new_tokens)
    hf = load_llm("smollm2-135m", batch_size=args.batch_size, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cached = CachedLLM(hf, Path(tmp) / "gen.sqlite", progress=False)
        rows[f"reasonrec transformers (batch {args.batch_size})"] = timed(cached, prompts, args.max_new_tokens)
        rows["reasonrec cached rerun"] = timed(cached, prompts, args.max_new_tokens)
    # The compute-bound floor shared by every run: reading the prompts (prefill) with one generated token.
    prefill_secs = timed(hf, prompts, 1)[0]
    if "llamacpp" not in skip:
        from reasonrec.llm.llamacpp import gguf_available

        if gguf_available():
            for kind, name in LLAMACPP.items():
                ll = load_llm("smollm2-135m", backend="llamacpp", n_threads=args.threads, n_ctx=2048,
                              parallel=args.parallel, requantize=kind)
                rows[name] = timed(ll, prompts, args.max_new_tokens)
                del ll
        else:
            print("llama.cpp: skipped (llama-cpp-python not installed)")

    base_name = "naive HF (batch 1)" if "naive HF (batch 1)" in rows else next(iter(rows))
    base_tps = rows[base_name][1] / rows[base_name][0]
    first = rows[f"reasonrec transformers (batch {args.batch_size})"]
    base_secs, base_texts = rows[base_name][0], rows[base_name][2]
    # Different weight types stop at different lengths, so the wall-time ratio for the same 32 prompts is printed
    # beside the tokens/s ratio, with how many greedy texts equal the naive fp32 ones.
    print(f"\n{'run':40s} {'seconds':>9s} {'tokens':>7s} {'tok/s':>9s} {'tok/s ratio':>12s} {'time ratio':>11s} "
          f"{'same text':>10s}")
    for name, (secs, toks, texts) in rows.items():
        tps = toks / secs if secs > 0 else float("inf")
        same = sum(a.strip() == b.strip() for a, b in zip(base_texts, texts, strict=True))
        print(f"{name:40s} {secs:9.2f} {toks:7d} {tps:9.1f} {tps / base_tps:11.1f}x "
              f"{base_secs / max(secs, 1e-9):10.1f}x {same:6d}/{len(texts)}")
    print(f"\nprefill alone (same prompts, 1 new token, transformers backend): {prefill_secs:.2f} s "
          f"= {100 * prefill_secs / first[0]:.0f} % of the transformers run; on CPU it is compute-bound and the "
          "same for batch 1, so it caps the transformers backend's batching speed-up")
    cached_secs = rows["reasonrec cached rerun"][0]
    print(f"cached rerun time / first run time: {100 * cached_secs / first[0]:.3f} % (target <= 1 %)")
    if "naive HF (batch 1)" in rows:
        print(f"transformers backend speed-up over naive HF: {(first[1] / first[0]) / base_tps:.1f}x (target >= 5x)")
        for name in LLAMACPP.values():
            if name in rows:
                secs, toks, _ = rows[name]
                print(f"{name} speed-up over naive HF: {(toks / secs) / base_tps:.1f}x tokens/s, "
                      f"{base_secs / secs:.1f}x wall time (target >= 5x)")


if __name__ == "__main__":
    main()
