"""What llama.cpp's extra CPU buffer types (``use_extra_bufts``) are worth, per weight type, on this CPU.

Issue 12: with them on, an AMX Xeon segfaults on the bundled Q4_1 file and its Q8_0 conversion, so the llama.cpp
backend turns them off where AMX is present (``extra_buffers: auto``). This measures what ``off`` costs where it
does not crash: the same ML-100K prompts, greedy, through the backend's batched path, with the setting on and off,
on the bundled Q4_1 file as shipped, its Q8_0 and BF16 conversions (the backend's default), and a Q4_0 conversion
(a type the CPU-repack buffer does take on x86, so that the cost of ``off`` has a case where it is not zero).

    python benchmarks/llamacpp_extra_buffers.py --data-dir /path/to/ml-100k [--threads 2 --repeats 2]

Each cell is the best of ``--repeats`` runs, on and off alternating, so that a load spike on a shared machine
hits both; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

KINDS = {"q4_1": "none", "q8_0": "q8_0", "bf16": "bf16", "q4_0": "q4_0"}


def ml100k_prompts(data_dir: Path, n_prompts: int) -> list[list[dict[str, str]]]:
    from reasonrec.llm.prompts import render

    items = pd.read_csv(data_dir / "u.item", sep="|", header=None, encoding="latin-1", usecols=[0, 1],
                        names=["item_id", "title"]).set_index("item_id")["title"]
    data = pd.read_csv(data_dir / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "ts"])
    prompts = []
    for _, u in data.sort_values(["user_id", "ts"]).groupby("user_id", sort=True):
        hist = [{"title": items[i], "rating": int(r)} for i, r in zip(u.item_id.iloc[:8], u.rating.iloc[:8],
                                                                       strict=True)]
        prompts.append(render("trackrec_cot", "movie", history=hist, like_threshold=3))
        if len(prompts) == n_prompts:
            return prompts
    return prompts


def q4_0_file(src: Path, out_dir: Path) -> Path:
    """The bundled file converted to Q4_0 (not a ``requantize`` option: only this benchmark needs it)."""
    import llama_cpp

    out = out_dir / "smollm2-135m.q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"could not convert {src} to Q4_0")
    return out


def run(name: str, requantize: str, setting: str, prompts, threads: int, max_new_tokens: int):
    from reasonrec.llm import load_llm

    llm = load_llm(name, backend="llamacpp", n_ctx=1024, n_threads=threads, parallel=len(prompts),
                   requantize=requantize, extra_buffers=setting)
    assert bool(llm._gen.model_params.use_extra_bufts) is (setting == "on")
    llm.generate(prompts[:1], max_new_tokens=2)  # warm-up: page the weights in
    start = time.perf_counter()
    gens = llm.generate(prompts, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - start
    tokens = sum(g.completion_tokens[0] for g in gens)
    return tokens / seconds, [g.text for g in gens]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("REASONREC_DATA_DIR"), required=False)
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, of " + ", ".join(KINDS))
    args = ap.parse_args()
    if args.data_dir is None:
        ap.error("--data-dir (or REASONREC_DATA_DIR) is required: the folder with ML-100K's u.data and u.item")
    import llama_cpp

    from reasonrec.llm import bundled, cpu
    from reasonrec.llm.llamacpp import amx_present, llama_cpp_version, use_extra_buffers

    prompts = ml100k_prompts(args.data_dir, args.n_prompts)
    print(f"llama-cpp-python {llama_cpp_version()}; AMX {'present' if amx_present() else 'absent'} "
          f"(auto -> use_extra_bufts={use_extra_buffers('auto')}); avx512_bf16 {'avx512_bf16' in cpu.cpu_flags()}")
    print(llama_cpp.llama_print_system_info().decode().strip())
    print(f"{len(prompts)} ML-100K prompts x {args.max_new_tokens} new tokens, greedy, {args.threads} threads, "
          f"best of {args.repeats}; load average before {os.getloadavg()}")
    print(f"{'weights':8} {'on tok/s':>9} {'off tok/s':>10} {'off/on':>7}  same greedy texts")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            name, requantize = bundled.SMOLLM2, KINDS[kind]
            if kind == "q4_0":
                name, requantize = str(q4_0_file(bundled.smollm2_gguf(), Path(tmp))), "none"
            best: dict[str, float] = {"on": 0.0, "off": 0.0}
            texts: dict[str, list[str]] = {}
            for r in range(args.repeats):
                for setting in (("on", "off") if r % 2 == 0 else ("off", "on")):
                    tps, texts[setting] = run(name, requantize, setting, prompts, args.threads, args.max_new_tokens)
                    best[setting] = max(best[setting], tps)
            same = sum(a == b for a, b in zip(texts["on"], texts["off"], strict=True))
            print(f"{kind:8} {best['on']:9.1f} {best['off']:10.1f} {best['off'] / best['on']:7.2f}  "
                  f"{same}/{len(prompts)}", flush=True)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
