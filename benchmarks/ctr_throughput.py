"""Training throughput (samples/s) of our DIN and DeepFM vs. DeepCTR-Torch on the same data and sizes, one run.

Usage: python benchmarks/ctr_throughput.py [--data-dir DIR] [--epochs 1] [--threads 1]

Data: the ML-100K collm training split, encoded once by ``FeatureBuilder`` and fed to both sides as the very same
ids (``benchmarks/parity.py``: ``collm_inputs`` / ``deepctr_arrays``; the same model sizes: D=32, MLP 200-80,
batch 1024, Adam). Timed: each library's own training call — ours ``train_ctr`` (its ``train_samples_per_s``
counts only the training batches, not the per-epoch validation), DeepCTR-Torch ``model.fit(..., verbose=0)``
without validation (which includes its one-off concatenation of the inputs into a tensor). Prints samples/s and
the ratio ours / reference (target >= 1x).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from parity import BATCH, LR, OUR_CFG, collm_inputs, deepctr_arrays, deepctr_model  # noqa: E402

from reasonrec.rec.ctr import build_ctr_model  # noqa: E402
from reasonrec.rec.trainer import CTRTrainConfig, train_ctr  # noqa: E402


def ours_samples_per_s(name: str, builder, enc, epochs: int) -> float:
    import torch

    torch.manual_seed(0)
    model = build_ctr_model(name, builder.feature_map, OUR_CFG)
    # the per-epoch validation pass is outside the timed training loop (see train_ctr)
    res = train_ctr(model, enc["train"], enc["valid"], CTRTrainConfig(
        lr=LR, batch_size=BATCH, epochs=epochs, patience=epochs, progress=False))
    return res["train_samples_per_s"]


def deepctr_samples_per_s(name: str, builder, enc, epochs: int) -> float:
    import torch

    model = deepctr_model(name, builder.feature_map, seed=0)
    model.compile(torch.optim.Adam(model.parameters(), lr=LR), "binary_crossentropy", metrics=[])
    x, y = deepctr_arrays(enc["train"], builder.feature_map)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=True)
    return epochs * len(y) / (time.perf_counter() - t0)


def main() -> None:
    default = os.environ.get("REASONREC_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data" /
                                                       "ml-100k"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=default)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="din,deepfm")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    builder, enc = collm_inputs(args.data_dir)
    n = len(enc["train"])
    print(f"ML-100K collm train: {n} samples, {args.epochs} epoch(s), batch {BATCH}, {args.threads} thread(s)")
    print(f"{'model':8} {'ours samples/s':>15} {'deepctr samples/s':>18} {'ratio':>7}")
    for name in args.models.split(","):
        ours = ours_samples_per_s(name, builder, enc, args.epochs)
        ref = deepctr_samples_per_s(name, builder, enc, args.epochs)
        print(f"{name:8} {ours:15.0f} {ref:18.0f} {ours / ref:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
