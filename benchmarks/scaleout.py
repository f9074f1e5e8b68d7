"""``engine: ray`` on this machine: rows/s of one LLM stage with 1 vs 2 Ray workers, and what Ray costs at 1 worker.

One call of the shape of an R4ec construction step: ``generate`` on ML-100K item prompts (greedy, the backend's
batch = one shard), through the run cache on a fresh cache file each time, so every row is computed:

    local       CachedLLM over the transformers backend in this process, torch pinned to 1 thread
    ray ×1      the same cache over RayBackend using 1 of its 2 workers (1 CPU: Ray pins the actor's threads to 1)
    ray ×2      both workers, 1 CPU each

The three alternate ``--repeats`` times (medians reported), so a change in the machine's load hits them alike.

It prints rows/s and tokens/s of each, the ratio ray ×2 / ray ×1 (the scale-out on 2 cores) and ray ×1 / local
(the engine's overhead: shipping shards and results, writing the Parquet shards), the workers' start-up (model
load in the actors) separately, and checks the three give the same texts. Then the per-call overhead that argues
for plain actors over Ray Data (reasonrec/llm/ray_engine.py): an empty shard round trip on an actor vs an empty
``ray.data`` ``map_batches`` over an actor pool of 2, which plans and starts a streaming executor per call.

    python benchmarks/scaleout.py --data-dir /path/to/ml-100k [--model tiny-random --n-prompts 64 --batch-size 4]

The machine's load average is printed before and after: other jobs on the 2 cores lower every figure, the 2-worker
one most.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd


def item_prompts(data_dir: Path, n: int) -> list[str]:
    items = pd.read_csv(data_dir / "u.item", sep="|", header=None, encoding="latin-1", usecols=[1, 2],
                        names=["title", "date"])
    return [f"Describe the movie {t} ({d}) for a recommender system: its genre, tone and audience."
            for t, d in items.head(n).itertuples(index=False)]


def timed_generate(llm, prompts, max_new_tokens: int) -> tuple[float, list[str], int]:
    t = time.perf_counter()
    gens = llm.generate(prompts, max_new_tokens=max_new_tokens)
    return time.perf_counter() - t, [g.text for g in gens], sum(sum(g.completion_tokens) for g in gens)


def data_overhead(ray, reps: int) -> dict[str, float]:
    """Median seconds of an empty call: actor round trip (2 shards on 2 actors) vs Ray Data map_batches."""

    @ray.remote(num_cpus=1)
    class Echo:
        def run(self, x):
            return x

    class EchoBatch:
        def __call__(self, batch):
            return batch

    actors = [Echo.remote() for _ in range(2)]
    ray.get([a.run.remote(0) for a in actors])
    actor_s, data_s = [], []
    for _ in range(reps):
        t = time.perf_counter()
        ray.get([a.run.remote(list(range(8))) for a in actors])
        actor_s.append(time.perf_counter() - t)
    for a in actors:  # free their CPUs for Ray Data's own actor pool
        ray.kill(a)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for _ in range(reps):
        t = time.perf_counter()
        ray.data.from_items([{"i": i} for i in range(16)]).map_batches(
            EchoBatch, batch_size=8, concurrency=2, num_cpus=1).take_all()
        data_s.append(time.perf_counter() - t)
    return {"actor_call_s": statistics.median(actor_s), "ray_data_call_s": statistics.median(data_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("REASONREC_DATA_DIR", "")) or None,
                    required="REASONREC_DATA_DIR" not in os.environ)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of local, ray ×1, ray ×2 (medians)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the empty-call overhead measurement")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scaleout.json")
    args = ap.parse_args()

    import ray
    import torch

    from reasonrec.llm.base import load_llm
    from reasonrec.llm.cache import CachedLLM
    from reasonrec.llm.engine import EngineSection, use_engine

    torch.set_num_threads(1)
    prompts = item_prompts(args.data_dir, args.n_prompts)
    load_before = os.getloadavg()[0]
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    out: dict = {"model": args.model, "n_prompts": len(prompts), "batch_size": args.batch_size,
                 "max_new_tokens": args.max_new_tokens, "load_before": load_before}
    texts: dict[str, list[str]] = {}
    runs: dict[str, list[dict]] = {"local": [], "ray_x1": [], "ray_x2": []}
    with tempfile.TemporaryDirectory() as tmp:
        opts = {"batch_size": args.batch_size}
        t = time.perf_counter()
        local = load_llm(args.model, backend="transformers", **opts)
        out["local_load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with use_engine(EngineSection(kind="ray", workers=2)):
            remote = load_llm(args.model, backend="transformers", **opts)
        out["ray_startup_s"] = time.perf_counter() - t  # 2 actors loading the model side by side
        both = remote.workers

        def measure(name: str, inner, rep: int) -> None:
            llm = CachedLLM(inner, Path(tmp) / f"{name}-{rep}" / "c.sqlite", progress=False)
            secs, texts[name], tokens = timed_generate(llm, prompts, args.max_new_tokens)
            runs[name].append({"seconds": secs, "rows_s": len(prompts) / secs, "tok_s": tokens / secs})
            print(f"  rep {rep} {name}: {secs:.2f} s", flush=True)

        for inner in (local, remote):  # first calls pay one-off costs (allocator, kernels); not measured
            inner.generate(prompts[:2], max_new_tokens=4)
        # alternate the three so that a change in the machine's load hits all of them alike
        for rep in range(args.repeats):
            measure("local", local, rep)
            remote.workers = both[:1]  # the same actor, alone
            measure("ray_x1", remote, rep)
            remote.workers = both
            measure("ray_x2", remote, rep)
        remote.close()
    for name, rs in runs.items():
        med = statistics.median(r["seconds"] for r in rs)
        out[name] = {"seconds": med, "rows_s": len(prompts) / med,
                     "tok_s": statistics.median(r["tok_s"] for r in rs), "runs": rs}
    out["ratio_2_vs_1_workers"] = out["ray_x2"]["rows_s"] / out["ray_x1"]["rows_s"]
    out["overhead_ray1_vs_local"] = out["ray_x1"]["seconds"] / out["local"]["seconds"]
    out["same_texts"] = texts["ray_x1"] == texts["local"] and texts["ray_x2"] == texts["local"]
    out["empty_call"] = data_overhead(ray, args.reps)
    out["load_after"] = os.getloadavg()[0]
    ray.shutdown()

    print(f"{len(prompts)} prompts × ≤{args.max_new_tokens} tokens, {args.model}, batch {args.batch_size} "
          f"(load {load_before:.1f} → {out['load_after']:.1f})")
    print(f"  model load: local {out['local_load_s']:.1f} s, 2 Ray workers {out['ray_startup_s']:.1f} s")
    for name in ("local", "ray_x1", "ray_x2"):
        r = out[name]
        each = ", ".join(f"{x['seconds']:.2f}" for x in r["runs"])
        print(f"  {name:7s} {r['seconds']:6.2f} s  {r['rows_s']:6.2f} rows/s  {r['tok_s']:7.1f} tok/s "
              f"(median of {args.repeats}: {each} s)")
    print(f"  ray ×2 / ray ×1: {out['ratio_2_vs_1_workers']:.2f}×   ray ×1 / local (time): "
          f"{out['overhead_ray1_vs_local']:.2f}×   same texts: {out['same_texts']}")
    e = out["empty_call"]
    print(f"  empty call: actor round trip {e['actor_call_s'] * 1e3:.1f} ms, "
          f"ray.data map_batches {e['ray_data_call_s'] * 1e3:.0f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"  → {args.out}")


if __name__ == "__main__":
    main()
