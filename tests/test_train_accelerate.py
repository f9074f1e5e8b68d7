"""The LoRA trainers under ``accelerate launch``: 2 CPU processes (DDP over gloo, configs/accelerate/cpu-2proc.yaml)
train the tiny model to the same loss curve as 1 process with the same global batch (4 = 2 × 2 vs 1 × 4).

Why they can match exactly: accelerate gives each process every other per-device batch of one seeded sampler, so a
global step sees the same 4 samples; DDP averages the gradients, and transformers sums the token counts across
processes before normalising (``average_tokens_across_devices``). What differs is the order of floating-point
sums (a 2-way gradient all-reduce) and, in one process only, the lean LM head (``train/lean.py``: equal to the
library loss to float32 rounding; it is off under several processes, where it would bypass DDP's gradient sync).
So the tolerance is ``1e-4`` absolute per logged loss, about 1e-5 relative to the tiny model's ~10.8. LoRA dropout
is off: its masks come from each process's own RNG stream.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ACCEL = Path(__file__).parents[1] / "configs" / "accelerate"


def _pairs(ml100k_dir: Path, n: int) -> pd.DataFrame:
    """(title → its genres) pairs from the real ML-100K item file."""
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
              "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
              "Western"]
    items = pd.read_csv(ml100k_dir / "u.item", sep="|", header=None, encoding="latin-1").head(n)
    return pd.DataFrame({"prompt": [f"Which genres is {t}?" for t in items[1]],
                         "completion": [", ".join(g for g, f in zip(genres, row, strict=True) if f)
                                        for row in items.iloc[:, 5:24].itertuples(index=False)]})


def _config(tmp: Path, model: Path, data: Path, name: str, per_device: int) -> Path:
    cfg = tmp / f"{name}.yaml"
    # LoRA dropout off: its masks come from each process's own RNG stream, so with it the curves match only in
    # distribution; everything else (data order, init, loss normalisation) is the same by construction.
    cfg.write_text(f"model:\n  name: {model}\n  lora:\n    dropout: 0.0\ndata:\n  train: {data}\ntraining:\n  output_dir: {tmp / name}\n"
                   f"  max_steps: 4\n  save_steps: 100\n  logging_steps: 1\n  learning_rate: 0.01\n"
                   f"  per_device_train_batch_size: {per_device}\n  precision: fp32\n")
    return cfg


def _losses(run: Path) -> list[float]:
    return [h["loss"] for h in json.loads((run / "train_log.json").read_text())["log_history"] if "loss" in h]


@pytest.mark.slow  # two `accelerate launch` start-ups of torch + trl: ~2-3 min on 2 loaded cores
def test_sft_two_processes_match_one_at_the_same_global_batch(tiny_model_path, ml100k_dir, tmp_path):
    accelerate = shutil.which("accelerate")
    assert accelerate, "accelerate is a core dependency; its launcher should be on PATH"
    data = tmp_path / "pairs.jsonl"
    _pairs(ml100k_dir, 32).to_json(data, orient="records", lines=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = _config(tmp_path, tiny_model_path, data, "one", 4)
    two = _config(tmp_path, tiny_model_path, data, "two", 2)
    subprocess.run([accelerate, "launch", "--num_processes", "1", "--cpu", "-m", "reasonrec", "train", "sft",
                    str(one)], check=True, env=env, timeout=900)
    subprocess.run([accelerate, "launch", "--config_file", str(ACCEL / "cpu-2proc.yaml"), "-m", "reasonrec",
                    "train", "sft", str(two)], check=True, env=env, timeout=900)
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 4, (a, b)
    assert a[0] != a[-1]  # the curve moves: the comparison is of training, not of one forward pass
    gap = max(abs(x - y) for x, y in zip(a, b, strict=True))
    print(f"1 process: {a}\n2 processes: {b}\nmax |Δ loss| = {gap:.2e}")
    assert gap < 1e-4, (a, b)
    assert json.loads((tmp_path / "two" / "train_log.json").read_text())["world_size"] == 2
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").exists()


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    seen = {}
    for path in sorted(ACCEL.glob("*.yaml")):
        cfg = load_config_from_file(str(path))
        seen[path.stem] = (str(cfg.distributed_type), cfg.num_processes)
    assert seen["ddp-1node-8gpu"] == ("DistributedType.MULTI_GPU", 8)
    assert seen["fsdp-1node-8gpu"] == ("DistributedType.FSDP", 8)
    assert seen["cpu-2proc"] == ("DistributedType.MULTI_GPU", 2)  # torchrun launcher; gloo on a CPU (see file)
    assert sys.executable  # the launcher runs this interpreter's reasonrec (PYTHONPATH is inherited)
