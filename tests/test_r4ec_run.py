"""R4ec end to end on real ML-100K samples: construction → four real LoRA SFT runs on the tiny model →
both inference strategies → encoding with the bundled encoder → CTR backbones.

The run is first killed (SIGKILL) while inference is generating, then resumed in-process; a third run with the
inference markers removed must answer every LLM call from the cache. The teacher is scripted
(tests/_r4ec_teacher.py); actors, reflectors, trainers, encoder and backbones are the real ones.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import _r4ec_teacher
import pandas as pd
import pytest
import yaml

from reasonrec.methods import run_experiment

TESTS = Path(__file__).parent


@pytest.fixture
def hash_teacher(monkeypatch):
    return _r4ec_teacher.install(setattr=monkeypatch.setattr)


def _cache_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def _kill_during_inference(config: Path, run: Path) -> int:
    """Start the run in a subprocess, SIGKILL it once inference has committed some answers; return their count."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(TESTS / "_r4ec_teacher.py"), str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, committed = time.time() + 900, 0
    try:
        while proc.poll() is None and time.time() < deadline:
            log = run / "log.txt"
            if log.exists() and "stage infer: running" in log.read_text():
                committed = _cache_rows(run / "llm_cache.sqlite")
                if committed:
                    break
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    assert committed, f"the run ended (exit {proc.returncode}) before inference committed anything to kill"
    assert not (run / "infer" / "_SUCCESS.json").exists()
    return committed


def test_r4ec_killed_resumed_and_cached(tmp_path, ml100k_dir, tiny_model_path, hash_teacher):
    run = tmp_path / "run"
    cfg = {
        "method": "r4ec", "run_dir": str(run),
        "data": {"dataset": "ml-100k", "protocol": "kar", "data_dir": str(ml100k_dir)},
        "subset": {"users": 10, "items": 40, "construct_fraction": 1.0, "history_len": 5},
        "teacher": {"name": "hash-teacher"},
        "generation": {"max_new_tokens": 8, "max_attempts": 1, "max_refine_steps": 1, "filter_k": 2},
        "train": {"base_model": str(tiny_model_path), "epochs": 1, "batch_size": 4, "max_length": 512},
        "rec": {"backbones": ["din", "dcn"], "seeds": [0], "epochs": 1, "batch_size": 64},
    }
    path = tmp_path / "r4ec.yaml"
    path.write_text(yaml.safe_dump(cfg))

    committed = _kill_during_inference(path, run)
    summary = run_experiment(path)  # resumes: construct and train are complete, inference continues
    assert hash_teacher.calls == 0  # the teacher's work survived the kill
    assert _cache_rows(run / "llm_cache.sqlite") > committed

    branches = summary["branches"]
    train = pd.read_parquet(run / "data" / "splits" / "train.parquet")
    for side in ("user", "item"):
        b = branches[side]
        decided = sum(b.get(k, 0) for k in ("correct_reasonable", "wrong_unreasonable", "correct_unreasonable",
                                            "wrong_reasonable", "reason_unparsed", "reflect_unparsed"))
        assert decided == train[f"{side}_id"].nunique()  # every case takes exactly one branch
        assert b.get("correct_reasonable", 0) > 0 and b.get("wrong_unreasonable", 0) > 0
        assert b["wrong_unreasonable"] == (b.get("refined_correct", 0) + b.get("refined_wrong", 0)
                                           + b.get("refine_unparsed", 0))
        # four real adapters were trained on what Algorithm 1 kept
        for role in ("actor", "reflect"):
            assert (run / "train" / f"{side}_{role}" / "adapter" / "adapter_model.safetensors").exists()
        inf = summary["inference"][side]
        assert inf["entities"] > 0 and 0 <= inf["unreasonable_after"] <= 1
    rec = summary["rec"]
    for backbone in ("din", "dcn"):
        assert set(rec[backbone]) == {"base", "system1", "refine", "filter"}
        for r in rec[backbone].values():
            assert 0 <= r["auc"] <= 1 and r["logloss"] > 0
    assert (run / "results.md").read_text().count("| din |") == 4
    manifest = json.loads((run / "manifest.json").read_text())
    assert "u.data" in " ".join(manifest["data_checksums"])

    # A stage whose marker is gone runs again, and every LLM call comes from the cache.
    (run / "infer" / "_SUCCESS.json").unlink()
    (run / "rec" / "_SUCCESS.json").unlink()
    rows = _cache_rows(run / "llm_cache.sqlite")
    again = run_experiment(path)
    assert _cache_rows(run / "llm_cache.sqlite") == rows
    assert again["inference"] == summary["inference"]
    assert again["rec"]["din"]["base"]["auc"] == pytest.approx(rec["din"]["base"]["auc"])
