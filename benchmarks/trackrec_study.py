"""The figures of a finished TrackRec run as one JSON and the markdown tables of its study note.

    python benchmarks/trackrec_study.py RUN_DIR --out benchmarks/results/trackrec-ml100k-cpu

Writes ``OUT.json`` (the run's per-round details, V's and DIN's paired Δ vs the reference with intervals, stage
seconds, sizes) and prints the markdown tables: per arm × round (V AUC / ACC with the user-bootstrap interval, DIN
AUC / ACC / LogLoss with the CoT field, chosen vs rejected reward, share of groups skipped, CoT tokens), and the
paired Δ of every variant vs ``results.reference`` from ``results.json``. The prose around them is written by
hand in ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reasonrec.eval.results import Timings, read_results
from reasonrec.methods.trackrec_steps import results_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="path without suffix; OUT.json is written")
    args = ap.parse_args()
    res, _ = read_results(args.run)
    details = res.details
    deltas = [d.model_dump() for d in res.deltas if d.subgroup == "all" and d.metric in ("auc", "logloss")]
    seconds = Timings.of_run(args.run).stage_seconds
    out = {"run": str(args.run.resolve()), "reference": res.reference, "split_checksum": res.split_checksum,
           "data": details["data"], "arms": details["arms"], "baselines": details["baselines"], "deltas": deltas,
           "stage_seconds": seconds, "config": res.config}
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(results_table(details))
    print(f"Paired Δ vs {res.reference} (user bootstrap, {res.n_boot} replicates, {res.confidence:.0%}):\n")
    print("| model | variant | metric | Δ | interval | p |\n|---|---|---|---|---|---|")
    for d in deltas:
        lo = "" if d["ci_low"] is None else f"{d['ci_low']:+.4f}"
        hi = "" if d["ci_high"] is None else f"{d['ci_high']:+.4f}"
        p = "" if d.get("p_value") is None else f"{d['p_value']:.3f}"
        v = "" if d["value"] is None else f"{d['value']:+.4f}"
        print(f"| {d['model']} | {d['variant']} | {d['metric']} | {v} | [{lo}, {hi}] | {p} |")
    print(f"\nStage seconds (sum {sum(v or 0 for v in seconds.values()):.0f}): "
          + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items() if v is not None))


if __name__ == "__main__":
    main()
