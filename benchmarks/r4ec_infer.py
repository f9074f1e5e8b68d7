"""R4ec's inference stage (§3.5 + the kar / r2ec answers) on transformers vs llama.cpp, same entities, one run.

The stage that dominated the R4ec CPU study (1,381 of its ~2,100 s) runs the trained adapters (actor, reflector,
R²ec actor per side) over every user and item. This script builds the CPU study's knowledge context (the config
given, default ``configs/r4ec/ml100k-cpu.yaml``), takes the first ``--users`` users and ``--items`` items, and runs
:func:`reasonrec.methods.r4ec.infer_side` for both sides on each backend with adapters of the trained shape (r 8,
α 16, all linear layers; small random B, so they are not no-ops — their values do not change the cost), with the
config's generation settings and constrained output. It prints seconds per entity per backend and the projection
for the config's full entity count. No LLM cache: every answer is generated.

    python benchmarks/r4ec_infer.py --data-dir /path/to/ml-100k [--users 6 --items 6 --threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=Path(__file__).parents[1] / "configs/r4ec/ml100k-cpu.yaml")
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("REASONREC_DATA_DIR"))
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--items", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backends", default="transformers,llamacpp")
    args = ap.parse_args()
    import torch
    from generation import save_lora

    from reasonrec.llm.base import load_llm
    from reasonrec.methods import r4ec
    from reasonrec.methods import r4ec_steps as steps
    from reasonrec.methods.common import prepare_splits
    from reasonrec.runs import RunDir

    torch.set_num_threads(args.threads)
    raw = yaml.safe_load(args.config.read_text())
    raw["data"]["data_dir"] = str(args.data_dir)
    tmp = Path(tempfile.mkdtemp(prefix="r4ec_infer_"))
    raw["run_dir"] = str(tmp / "run")
    cfg = r4ec.Config.model_validate(raw)
    run = RunDir(cfg.run_dir, verbose=False)
    ctx = prepare_splits(cfg.data, run, subset=cfg.subset)
    sides = {}
    for side, k in (("user", args.users), ("item", args.items)):
        ids, entities = ctx.entities(side)
        sides[side] = (len(ids), entities[:k])
    total = sum(n for n, _ in sides.values())
    adapters = {f"{side}_{role}": save_lora(tmp / f"{side}_{role}", seed=i)
                for i, (side, role) in enumerate((s, r) for s in ("user", "item") for r in ("actor", "reflect", "r2ec"))}
    print(f"load average before: {os.getloadavg()}; {args.users} users + {args.items} items of {total} entities "
          f"({cfg.subset.users} users / {cfg.subset.items} items), threads {args.threads}")
    g = cfg.generation
    secs = {}
    for backend in args.backends.split(","):
        opts = {"n_threads": args.threads} if backend == "llamacpp" else {"threads": args.threads}
        llm = load_llm(cfg.train.base_model, backend=backend, adapters={k: str(v) for k, v in adapters.items()},
                       **opts)
        gen = steps.GenArgs(g.max_new_tokens, 0.0, g.max_attempts, cfg.data.seed, g.prime,
                            constrain=r4ec._constrain(g, llm), domain=ctx.domain)
        start = time.perf_counter()
        for side, (_, entities) in sides.items():
            r4ec.infer_side(llm, side, ctx.domain, entities, adapters, g, gen)
        secs[backend] = time.perf_counter() - start
        n = args.users + args.items
        print(f"{backend:12s} {secs[backend]:7.1f} s for {n} entities = {secs[backend] / n:5.2f} s/entity; "
              f"projected for {total}: {secs[backend] / n * total / 60:5.1f} min")
        del llm
    if len(secs) == 2:
        a, b = secs.values()
        print(f"ratio {a / b:.2f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
