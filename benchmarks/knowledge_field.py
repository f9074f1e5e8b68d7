"""Does a knowledge field that carries signal help? DIN with vs. without an item text-vector field, ML-100K collm.

Usage: python benchmarks/knowledge_field.py [--data-dir DIR] [--seeds 0,1,2] [--encoder minilm]

The field is each item's "Title: ... Genres: ..." text encoded by the bundled all-MiniLM-L6-v2 (``item_text_knowledge``:
computed once into a Parquet knowledge store, 384-d, mapped to a 32-d field by the default MLP connector). Both arms
are the same ``run_ctr`` call (the one behind ``reasonrec rec train``) with the same seeds (init and shuffling; the
collm split is fixed by time), so the only difference is the extra field. Prints test AUC / UAUC / LogLoss per seed,
the mean and the paired difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reasonrec.data import load_tables, make_splits  # noqa: E402
from reasonrec.rec.ctr import CTRModelConfig  # noqa: E402
from reasonrec.rec.pipeline import item_text_knowledge, run_ctr  # noqa: E402
from reasonrec.rec.trainer import CTRTrainConfig  # noqa: E402


def run(data_dir, seeds, encoder: str = "minilm", model: str = "din") -> list[dict]:
    import torch

    torch.set_num_threads(1)
    tables = load_tables("ml-100k", data_dir)
    splits = make_splits(tables, "collm", seed=0)
    t0 = time.monotonic()
    know = item_text_knowledge(tables, encoder, progress=False)
    print(f"item knowledge field: {know.table.shape} from {encoder} in {time.monotonic() - t0:.1f}s", flush=True)
    rows = []
    for seed in seeds:
        for arm, k in (("without", []), ("with", [know])):
            t0 = time.monotonic()
            m = run_ctr(model, splits, tables, CTRModelConfig(), CTRTrainConfig(seed=seed, progress=False),
                        knowledge=k)
            rows.append({"seed": seed, "arm": arm, "auc": m["auc"], "uauc": m["uauc"], "logloss": m["logloss"],
                         "best_epoch": m["best_epoch"], "seconds": time.monotonic() - t0})
            print(f"  seed {seed} {arm:7} auc {m['auc']:.4f} uauc {m['uauc']:.4f} logloss {m['logloss']:.4f} "
                  f"(best epoch {m['best_epoch']}, {rows[-1]['seconds']:.0f}s)", flush=True)
    return rows


def main() -> None:
    default = os.environ.get("REASONREC_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                                       "ml-100k"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=default)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--model", default="din")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = run(args.data_dir, seeds, args.encoder, args.model)
    by = {(r["seed"], r["arm"]): r for r in rows}
    print(f"\n{args.model.upper()} on ML-100K collm, item text field ({args.encoder}) vs none, same seeds")
    print(f"{'seed':>4} {'metric':8} {'without':>9} {'with':>9} {'diff':>8}")
    for metric in ("auc", "uauc", "logloss"):
        diffs = []
        for s in seeds:
            a, b = by[(s, "without")][metric], by[(s, "with")][metric]
            diffs.append(b - a)
            print(f"{s:>4} {metric:8} {a:9.4f} {b:9.4f} {b - a:+8.4f}")
        wo = [by[(s, "without")][metric] for s in seeds]
        wi = [by[(s, "with")][metric] for s in seeds]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        print(f"{'mean':>4} {metric:8} {statistics.mean(wo):9.4f} {statistics.mean(wi):9.4f} "
              f"{statistics.mean(diffs):+8.4f}  (sd of diff {sd:.4f})")


if __name__ == "__main__":
    main()
