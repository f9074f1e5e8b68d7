"""Seconds per optimizer step and peak RAM of each trainer on the bundled SmolLM2-135M (LoRA r 8 on q/v), old vs new.

Workloads (prompts of ≈ 300-600 tokens, the size of the methods' recommendation prompts):

    sft    batch 4 (prompt, completion ≈ 60 tokens)
    sdpo   batch 1 prompt × (1 chosen + 9 rejected) completions ≈ 15 tokens (TrackRec: 1 + 9 candidates),
           prompt run once and its KV cache shared (``share_prompt``, the default)
    sdpo-noshare  the same with ``share_prompt: false`` (10 full sequences, as trl's DPO trainer)
    grpo   1 prompt × group 8, max 64 new tokens per completion, rank reward (STARec)
    yesno  batch 4, mixed label / reasoning answers (ThinkRec)

Variants (``--variants``, each trainer × variant in its own process):

    old            fp32 weights, the plain loss paths (``training.lean_logits: false``): what the trainers did before
    lean-fp32      fp32, LM head on the completion positions only (SFT, S-DPO without share_prompt)
    bf16-autocast  lean, fp32 weights, forward autocast to bf16 (``precision: bf16, bf16_mode: autocast``)
    new            the defaults: lean, ``precision: auto`` (bf16 on AMX / AVX512-BF16 CPUs) with bf16 base weights
                   and fp32 LoRA master weights (``bf16_mode: weights``)

Each trainer runs in its own process (so peak RSS is its own) for ``--steps`` optimizer steps; the first step is
reported separately (warm-up) and the rest as median seconds / step. Usage::

    python benchmarks/train_step.py [--steps 4] [--only sft,sdpo] [--variants old,new] [--data-dir DIR]

Prompts use MovieLens-100K titles from ``--data-dir`` / ``$REASONREC_DATA_DIR`` (``ml-100k/u.item``) when present,
else synthetic titles of the same shape. The CPU may be shared with other jobs: the numbers are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINERS = ("sft", "sdpo", "sdpo-noshare", "grpo", "yesno")
VARIANTS = {
    "old": {"precision": "fp32", "lean_logits": False},
    "lean-fp32": {"precision": "fp32", "lean_logits": True},
    "bf16-autocast": {"precision": "bf16", "bf16_mode": "autocast", "lean_logits": True},
    "new": {},
}


def titles(data_dir: str | None) -> list[str]:
    if data_dir and (Path(data_dir) / "ml-100k" / "u.item").exists():
        lines = (Path(data_dir) / "ml-100k" / "u.item").read_text(encoding="latin-1").splitlines()
        return [ln.split("|")[1] for ln in lines if ln.count("|") > 2]
    rng = random.Random(0)
    words = "Night Star River Dark Love War Last City Blue Man Day Story Lost Heart Fire King".split()
    return [f"{' '.join(rng.sample(words, 3))} ({rng.randint(1950, 1998)})" for _ in range(1000)]


def prompt(rng: random.Random, pool: list[str], n_hist: int) -> str:
    hist = rng.sample(pool, n_hist)
    liked = "; ".join(f"{t} (rated {rng.randint(1, 5)})" for t in hist)
    return (f"The user watched these movies, oldest first, with their ratings: {liked}. "
            f"Think about what the user enjoys and dislikes. Would the user enjoy the movie "
            f"{rng.choice(pool)}? Answer Yes or No, then explain briefly.")


def build(kind: str, out: Path, steps: int, data_dir: str | None, variant: str = "new"):
    import pandas as pd

    from reasonrec.train import config as C

    rng = random.Random(0)
    pool = titles(data_dir)
    common = {"model": {"name": "smollm2-135m"}, "data": {"train": "unused.jsonl"},
              "training": {"output_dir": str(out), "max_steps": steps, "save_steps": 10_000, "logging_steps": 1,
                           "learning_rate": 1e-4, "max_length": 1024, **VARIANTS[variant]}}
    if kind == "sft":
        df = pd.DataFrame({"prompt": [prompt(rng, pool, 30) for _ in range(16)],
                           "completion": ["Yes. " + " ".join(rng.sample(pool, 6)) + " share the user's taste."] * 16})
        cfg = C.SFTConfig.model_validate({**common, "training": {**common["training"], "per_device_train_batch_size": 4}})
        from reasonrec.train.sft import build_sft_trainer
        return build_sft_trainer, cfg, df
    if kind in ("sdpo", "sdpo-noshare"):
        df = pd.DataFrame({"prompt": [prompt(rng, pool, 30) for _ in range(8)],
                           "chosen": [rng.choice(pool) for _ in range(8)],
                           "rejected": [rng.sample(pool, 9) for _ in range(8)]})
        cfg = C.SDPOConfig.model_validate({**common, "share_prompt": kind == "sdpo",
                                           "training": {**common["training"], "per_device_train_batch_size": 1}})
        from reasonrec.train.sdpo import build_sdpo_trainer
        return build_sdpo_trainer, cfg, df
    if kind == "grpo":
        # the rank reward reads the titles the prompt showed (``candidates``) and the held-out one among them
        cands = [rng.sample(pool, 10) for _ in range(8)]
        df = pd.DataFrame({"prompt": [prompt(rng, pool, 30) + " Then rank these 10 movies for the user: "
                                      + "; ".join(c) + "." for c in cands],
                           "target_title": [rng.choice(c) for c in cands], "candidates": cands})
        cfg = C.GRPOConfig.model_validate({**common, "num_generations": 8, "max_completion_length": 64,
                                           "training": {**common["training"], "per_device_train_batch_size": 8}})
        from reasonrec.train.grpo import build_grpo_trainer
        return build_grpo_trainer, cfg, df
    rows = []
    for i in range(32):
        label = i % 2
        reason = i % 5 == 0
        ans = ("Yes" if label else "No") + (". The user likes dramas of this period and rated similar films highly."
                                            if reason else "")
        rows.append({"prompt": prompt(rng, pool, 30), "label": label, "answer": ans})
    cfg = C.YesNoConfig.model_validate({**common, "training": {**common["training"], "per_device_train_batch_size": 4}})
    from reasonrec.train.yesno import build_yesno_trainer
    return build_yesno_trainer, cfg, pd.DataFrame(rows)


def run_one(kind: str, steps: int, data_dir: str | None, variant: str = "new") -> dict:
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    times: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        # Wall time and process CPU time (all threads): on a shared machine the CPU seconds are the steadier figure;
        # uncontended wall time ≈ CPU seconds / threads.
        def on_step_begin(self, args, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)
            cpu.append(time.process_time() - self.c)

    with tempfile.TemporaryDirectory() as tmp:
        builder, cfg, df = build(kind, Path(tmp), steps, data_dir, variant)
        trainer, tok = builder(cfg, df, callbacks=[Clock()])
        batch = next(iter(trainer.get_train_dataloader()))
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else None
        width = tuple(batch["input_ids"].shape) if "input_ids" in batch else None
        trainer.train()
    from reasonrec.train.common import precision_plan

    plan = precision_plan(cfg.training)
    return {"trainer": kind, "variant": variant, "weights": plan.weights_dtype,
            "autocast": "bf16" if plan.bf16 else "fp16" if plan.fp16 else "-", "first_step_s": round(times[0], 2),
            "median_step_s": round(statistics.median(times[1:] or times), 2), "steps": len(times),
            "median_step_cpu_s": round(statistics.median(cpu[1:] or cpu), 2), "threads": torch.get_num_threads(),
            "batch_shape": width, "batch_tokens": tokens,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--only", default=",".join(TRAINERS))
    ap.add_argument("--variants", default="old,new", help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--data-dir", default=os.environ.get("REASONREC_DATA_DIR"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, variant = a.child.split(":")
        print("RESULT " + json.dumps(run_one(kind, a.steps, a.data_dir, variant)), flush=True)
        return
    rows = []
    print(f"load average before: {os.getloadavg()}", flush=True)
    jobs = [(k, v) for k in a.only.split(",") for v in a.variants.split(",")]
    for kind, variant in jobs:
        cmd = [sys.executable, __file__, "--child", f"{kind}:{variant}", "--steps", str(a.steps)]
        if a.data_dir:
            cmd += ["--data-dir", a.data_dir]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{kind} {variant}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(line[7:])
        row["wall_s"] = round(time.time() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not rows:
        return
    old = {r["trainer"]: r for r in rows if r["variant"] == "old"}
    print(f"\n{'trainer':12} {'variant':14} {'weights':>8} {'autocast':>8} {'wall s/step':>11} {'cpu s/step':>10} "
          f"{'× old':>6} {'first wall':>10} {'batch (rows, T)':>16} {'tokens':>7} {'peak GiB':>9}")
    for r in rows:
        ref = old.get(r["trainer"])
        speed = f"{ref['median_step_s'] / r['median_step_s']:6.2f}" if ref else f"{'-':>6}"
        print(f"{r['trainer']:12} {r['variant']:14} {r['weights']:>8} {r['autocast']:>8} {r['median_step_s']:11.2f} "
              f"{r['median_step_cpu_s']:10.2f} {speed} {r['first_step_s']:10.2f} "
              f"{str(r['batch_shape']):>16} {str(r['batch_tokens']):>7} {r['peak_rss_gib']:9.2f}")
    print(f"\ncpu threads: {os.cpu_count()}, load average after: {os.getloadavg()} (shared with other jobs; figures "
          "are upper bounds); '× old' = old wall s/step / this wall s/step")


if __name__ == "__main__":
    main()
