"""Time to prepare MovieLens-100K for every protocol from the raw files (cold: no Parquet cache).

Usage: python benchmarks/data_prep.py [--data-dir DIR] [--repeat N]

Prints, side by side, the cold pipeline (read raw files + all four protocols), the warm pipeline (tables from the
Parquet cache) and each stage, with the ratio to the 15 s budget of issue 3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
BUDGET_S = 15.0
PROTOCOLS = ("collm", "kar", "starec", "tallrec")


def main() -> None:
    default = os.environ.get("REASONREC_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=default)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        os.environ["REASONREC_CACHE_DIR"] = cache  # an empty cache: the first load is cold
        t0 = time.perf_counter()
        from reasonrec.data import load_tables, make_splits  # import cost counts: a fresh CLI pays it too

        t_import = time.perf_counter() - t0
        cold, warm, stages = [], [], {}
        for r in range(args.repeat):
            t0 = time.perf_counter()
            tables = load_tables("ml-100k", args.data_dir, cache=False)
            stages.setdefault("read raw files", []).append(time.perf_counter() - t0)
            for p in PROTOCOLS:
                t1 = time.perf_counter()
                make_splits(tables, p, seed=0)
                stages.setdefault(p, []).append(time.perf_counter() - t1)
            cold.append(time.perf_counter() - t0)
            if r == 0:
                load_tables("ml-100k", args.data_dir)  # fill the cache once
            t0 = time.perf_counter()
            tables = load_tables("ml-100k", args.data_dir)
            for p in PROTOCOLS:
                make_splits(tables, p, seed=0)
            warm.append(time.perf_counter() - t0)

    print(f"ML-100K, all protocols ({', '.join(PROTOCOLS)}); median of {args.repeat} runs; import {t_import:.2f} s")
    print(f"{'stage':<18}{'seconds':>10}")
    for name, ts in stages.items():
        print(f"{name:<18}{statistics.median(ts):>10.3f}")
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"{'cold total':<18}{c:>10.3f}   budget {BUDGET_S:.0f} s -> {c / BUDGET_S:.1%} of budget")
    print(f"{'warm (cached)':<18}{w:>10.3f}   cold/warm = {c / w:.2f}x")
    print(f"cold incl. import: {c + t_import:.2f} s")


if __name__ == "__main__":
    main()
