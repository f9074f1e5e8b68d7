"""Generation throughput on the bundled SmolLM2-135M: naive HF vs the old and new transformers paths vs llama.cpp.

Same prompts, same model, one run: ML-100K user-preference prompts (TrackRec's CoT prompt, Fig. 4, from each
user's first rated movies), greedy, up to 128 new tokens (issue 14: 128 prompts, 2 threads).

    naive HF fp32        transformers ``model.generate`` one prompt at a time (batch 1), fp32: what a first script does
    naive HF bf16        the same in bf16: the batch-1 reference the batched bf16 texts must equal
    transformers old     this project's transformers backend as it was: fp32, length-sorted left-padded batches
    transformers new     the same backend with ``dtype: auto`` (bf16 on AMX / AVX512-BF16 CPUs) and ``--batch-size``:
                         ``static`` (length-sorted batches) and ``refill`` (finished rows' slots refilled)
    llama.cpp BF16       this project's llama.cpp backend on the BF16 conversion, ``--parallel`` sequences together
    ... + LoRA           with ``--lora``: the new transformers path and llama.cpp with a trained-shape LoRA adapter
                         (R4ec's: r 8, α 16, all linear layers; random B so it is not a no-op), llama.cpp reading it
                         GGUF-converted (reasonrec.llm.lora_gguf) — the measurement behind ``infer_backend: auto``

Before the runs it prints the CPU's bf16 features and measures the machine's GEMM roofline (``torch.matmul`` of
2048 × 2048 matrices in fp32 and bf16 at ``--threads``); each run reports tokens/s, the ratio to naive HF fp32,
and the share of the bf16 roofline it achieves, counting 2 × parameters FLOPs per processed token (prompt and
generated; attention ignored, so it is a lower bound on work done). Texts are compared with naive fp32 (bf16 vs
fp32 near-tie flips) and with naive bf16 (batched vs batch-1 in the same dtype).

    python benchmarks/generation.py --data-dir /path/to/ml-100k [--n-prompts 128 --threads 2 --batch-size 64]

``--threads`` pins torch and llama.cpp to the same number of CPU threads; on a shared machine more threads than
free cores makes both spin-wait (see reasonrec/llm/llamacpp.py). The load average is printed before and after:
on a loaded machine every figure is an upper bound on the time (lower bound on the speed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd


def gemm_gflops(dtype_name: str, threads: int, n: int = 2048, reps: int = 6) -> float:
    """Measured ``torch.matmul`` GFLOP/s of two n × n matrices (best of ``reps`` after a warm-up)."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


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


def naive_hf(model_dir: Path, prompts, max_new_tokens: int, dtype: str = "float32"):
    """→ (seconds, new tokens, prompt tokens, texts)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    texts, tokens, prompt_tokens = [], 0, 0
    start = time.perf_counter()
    for p in prompts:
        ids = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        tokens += len(new)
        prompt_tokens += ids["input_ids"].shape[1]
        texts.append(tok.decode(new, skip_special_tokens=True))
    return time.perf_counter() - start, tokens, prompt_tokens, texts


def save_lora(out: Path, seed: int = 0) -> Path:
    """A LoRA adapter of R4ec's shape on the bundled model (random B, so it changes the outputs), saved by peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reasonrec.llm.bundled import smollm2_hf_dir

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir())
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # peft's random init gives huge deltas; scale them to a trained adapter's size
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.01)
    peft_model.save_pretrained(out)
    return out


def timed(llm, prompts, max_new_tokens: int, adapter: str | None = None):
    """→ (seconds, new tokens, prompt tokens, texts) of one ``generate`` call."""
    start = time.perf_counter()
    gens = llm.generate(prompts, max_new_tokens=max_new_tokens, adapter=adapter)
    return (time.perf_counter() - start, sum(g.completion_tokens[0] for g in gens),
            sum(g.prompt_tokens for g in gens), [g.text for g in gens])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("REASONREC_DATA_DIR"),
                    help="ML-100K folder (u.data, u.item); default $REASONREC_DATA_DIR")
    ap.add_argument("--n-prompts", type=int, default=128, help="fewer for a quick iteration on a shared machine")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--history", type=int, default=15, help="longest history in a prompt")
    ap.add_argument("--old-batch-size", type=int, default=32, help="batch of the old fp32 transformers run")
    ap.add_argument("--batch-size", type=int, default=64, help="batch of the new transformers run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=16, help="sequences the llama.cpp backend decodes together")
    ap.add_argument("--skip", default="", help="comma-separated: naive,naive-bf16,old,static,refill,llamacpp")
    ap.add_argument("--lora", action="store_true", help="also run transformers and llama.cpp with a LoRA adapter")
    args = ap.parse_args()
    if args.data_dir is None or not (Path(args.data_dir) / "u.data").exists():
        raise SystemExit("pass --data-dir pointing at the MovieLens-100K folder (u.data, u.item)")
    import torch

    from reasonrec.llm.base import load_llm
    from reasonrec.llm.bundled import smollm2_hf_dir
    from reasonrec.llm.device import cpu_features, resolve_dtype

    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    feats = cpu_features()
    print(f"load average before: {os.getloadavg()}; cpu count {os.cpu_count()}")
    print(f"CPU: amx={feats['amx']} avx512_bf16={feats['avx512_bf16']} torch capability={feats['capability']}; "
          f"flags: {' '.join(feats['flags'])}")
    auto = resolve_dtype("auto", "cpu", where="benchmark")
    gflops = {d: gemm_gflops(d, args.threads) for d in ("float32", "bfloat16")}
    print(f"GEMM 2048² at {args.threads} threads: fp32 {gflops['float32']:.0f} GFLOP/s, bf16 "
          f"{gflops['bfloat16']:.0f} GFLOP/s; dtype auto → {auto.dtype} ({auto.reason})")
    prompts = ml100k_prompts(Path(args.data_dir), args.n_prompts, args.history)
    print(f"{len(prompts)} ML-100K TrackRec CoT prompts, greedy, max_new_tokens={args.max_new_tokens}, "
          f"threads={args.threads}, SmolLM2-135M-Instruct")
    rows: dict[str, tuple] = {}
    naive32, naive16 = "naive HF fp32 (batch 1)", "naive HF bf16 (batch 1)"
    if "naive" not in skip:
        rows[naive32] = naive_hf(smollm2_hf_dir(), prompts, args.max_new_tokens, "float32")
    if "naive-bf16" not in skip:
        rows[naive16] = naive_hf(smollm2_hf_dir(), prompts, args.max_new_tokens, "bfloat16")
    if "old" not in skip:
        old = load_llm("smollm2-135m", batch_size=args.old_batch_size, threads=args.threads, dtype="float32")
        rows[f"transformers old (fp32, batch {args.old_batch_size})"] = timed(old, prompts, args.max_new_tokens)
        del old
    adapters = {"lora": str(save_lora(Path(tempfile.mkdtemp(prefix="bench_lora_"))))} if args.lora else {}
    new = load_llm("smollm2-135m", batch_size=args.batch_size, threads=args.threads, dtype="auto",
                   adapters=adapters)
    n_params = sum(p.numel() for n, p in new.model.named_parameters() if "lora_" not in n)  # tied head counted once
    for scheduler in ("static", "refill"):
        if scheduler not in skip:
            new.options.scheduler = scheduler
            rows[f"transformers new ({auto.dtype}, {scheduler}, batch {args.batch_size})"] = timed(
                new, prompts, args.max_new_tokens)
            if args.lora:
                rows[f"transformers new ({auto.dtype}, {scheduler}) + LoRA"] = timed(
                    new, prompts, args.max_new_tokens, adapter="lora")
    del new
    if "llamacpp" not in skip:
        from reasonrec.llm.llamacpp import gguf_available

        if gguf_available():
            ll = load_llm("smollm2-135m", backend="llamacpp", n_threads=args.threads, n_ctx=2048,
                          parallel=args.parallel, requantize="auto")
            rows[f"llama.cpp BF16 (parallel {args.parallel})"] = timed(ll, prompts, args.max_new_tokens)
            del ll
            if args.lora:
                ll = load_llm("smollm2-135m", backend="llamacpp", n_threads=args.threads, n_ctx=2048,
                              parallel=args.parallel, requantize="auto", adapters=adapters)
                rows[f"llama.cpp BF16 (parallel {args.parallel}) + LoRA"] = timed(ll, prompts, args.max_new_tokens,
                                                                                  adapter="lora")
                del ll
        else:
            print("llama.cpp: skipped (llama-cpp-python not installed)")

    base_name = naive32 if naive32 in rows else next(iter(rows))
    base_tps = rows[base_name][1] / rows[base_name][0]
    print(f"\n{'run':40s} {'seconds':>8s} {'new tok':>8s} {'tok/s':>8s} {'× naive':>8s} {'% bf16 roof':>11s} "
          f"{'= fp32 b1':>9s} {'= bf16 b1':>9s}")
    for name, (secs, toks, ptoks, texts) in rows.items():
        tps = toks / secs if secs > 0 else float("inf")
        roof = 100 * 2 * n_params * (toks + ptoks) / secs / 1e9 / gflops["bfloat16"]
        same = {}
        for ref in (naive32, naive16):
            same[ref] = (f"{sum(a.strip() == b.strip() for a, b in zip(rows[ref][3], texts, strict=True))}/"
                         f"{len(texts)}" if ref in rows else "-")
        print(f"{name:40s} {secs:8.1f} {toks:8d} {tps:8.1f} {tps / base_tps:7.1f}x {roof:10.1f}% "
              f"{same[naive32]:>9s} {same[naive16]:>9s}")
    print("\n'= fp32 b1' / '= bf16 b1': greedy texts equal to naive HF fp32 / bf16 at batch 1. Differences from "
          "fp32 in bf16 runs are near-tie flips of the rounding; differences from bf16 batch 1 in the bf16 batched "
          f"run are padding / batch-shape rounding. Roofline: 2 × {n_params / 1e6:.0f} M params FLOPs per prompt + new token over "
          "the bf16 GEMM GFLOP/s.")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
