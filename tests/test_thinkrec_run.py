"""ThinkRec end to end on real ML-100K samples with the tiny random model (real tokenizer) as teacher and LLM.

- Default: every stage kind (keywords, MF, reasoning synthesis, think + label LoRAs, experts, projectors, routed
  scoring, generated reasons, reason metrics) with one ablation and two baselines, SIGKILLed while the teacher
  writes reasons and resumed in-process: no teacher row committed before the kill is generated again; the
  LoRAs, experts and projector were really trained; results.json holds every arm on the same test samples.
- ``slow``: configs/thinkrec/smoke.yaml as shipped (all ablations and baselines).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _kill import kill_in_stage

from reasonrec.eval.results import read_results
from reasonrec.llm import cache
from reasonrec.methods import run_experiment
from reasonrec.train.common import adapter_weights

CONFIG = Path(__file__).parents[1] / "configs" / "thinkrec" / "smoke.yaml"


def _rows(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM entries WHERE kind = 'generate'").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def _config(tmp_path: Path, **overrides) -> tuple[Path, Path]:
    run = tmp_path / "run"
    cfg = {**yaml.safe_load(CONFIG.read_text()), "run_dir": str(run), **overrides}
    path = tmp_path / "thinkrec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, run


def _lora_b(folder: Path) -> dict:
    t = adapter_weights(folder)
    assert any(float(v.abs().sum()) > 0 for k, v in t.items() if "lora_B" in k), folder   # B starts at 0
    return t


def test_killed_during_reason_synthesis_resumes_and_every_stage_runs(tmp_path, ml100k_dir, monkeypatch):
    teacher = {"name": "tiny-random", "options": {"batch_size": 1}}   # one commit per prompt: kill between them
    path, run = _config(tmp_path, teacher=teacher, ablations=["no_experts"], baselines=["collm", "mf"])
    kill_in_stage(path, run, ml100k_dir, "reasons", lambda: _rows(run / "llm_cache.sqlite"))
    with sqlite3.connect(run / "llm_cache.sqlite", timeout=30) as conn:
        before = {k for (k,) in conn.execute("SELECT key FROM entries")}

    written: list[str] = []
    real_put = cache.GenerationCache.put_many

    def put_many(self, rows):
        written.extend(key for key, _, _, _ in rows)
        return real_put(self, rows)

    monkeypatch.setattr(cache.GenerationCache, "put_many", put_many)
    summary = run_experiment(path, data_dir=ml100k_dir)
    assert written and not set(written) & before          # nothing committed before the kill was redone

    syn = summary["reason_synthesis"]["train"]
    assert syn["samples"] == 8 and 1 <= syn["mean_tries"] <= 2 and syn["gave_up"] <= 8
    reasons = pd.read_parquet(run / "reasons" / "reasons.parquet")
    assert set(reasons["tries"]) <= {1, 2} and (~reasons["gave_up"] | (reasons["tries"] == 2)).all()  # give-up: all tries
    think = pd.read_parquet(run / "data" / "think" / "text.parquet")
    assert set(think["kind"]) == {"label", "reason"} and (think["kind"] == "label").sum() == 24
    items = pd.read_parquet(run / "keywords" / "items.parquet")
    assert items["keywords"].str.len().gt(0).mean() > 0.95
    assert items["keywords"].map(lambda s: len(s.split(", "))).max() <= 10

    g, e = _lora_b(run / "train" / "lora-think" / "adapter"), _lora_b(run / "train" / "experts-think" / "expert0" /
                                                                       "adapter")
    layer0 = [k for k in g if ".layers.0." in k]
    assert layer0 and all(torch.equal(g[k], e[k]) for k in layer0)             # experts move the last layer only
    assert any(not torch.equal(g[k], e[k]) for k in g if ".layers.1." in k)
    proj = run / "train" / "projector-think" / "adapter"
    p = adapter_weights(proj)
    assert all(torch.equal(g[k], p[k]) for k in g)                               # LoRA frozen in the projector stage
    assert (proj / "soft_projector.pt").exists()

    preds = pd.read_parquet(run / "predictions.parquet")
    assert set(preds["variant"]) == {"thinkrec", "no_experts", "collm", "mf"}
    assert preds.groupby("variant").size().eq(summary["data"]["test"]).all()
    assert set(preds["user_type"]) <= {"warm", "cold"}
    assert summary["routes"]["no_experts"] == {"global": summary["data"]["test"]}
    scores = preds.pivot_table(index="sample", columns="variant", values="score")
    assert not np.allclose(scores["thinkrec"], scores["no_experts"])            # experts change the scores
    res, _ = read_results(run / "results.json")
    metrics = {r.metric for r in res.rows}
    assert {"auc", "uauc", "ndcg@5", "map@5"} <= metrics and res.reference == "collm"
    assert {r.subgroup for r in res.rows} >= {"all", "cold"}
    q = summary["reason_quality"]["thinkrec"]
    assert q["n"] == 4 and 0 <= q["bertscore"] <= 1 and q["rouge_l"] is not None
    assert "| thinkrec |" in (run / "results.md").read_text()


@pytest.mark.slow
def test_smoke_config_end_to_end(tmp_path, ml100k_dir):
    path, run = _config(tmp_path)
    summary = run_experiment(path, data_dir=ml100k_dir)
    assert set(summary["arms"]) == {"thinkrec", "no_think", "no_experts", "tallrec", "collm"}
    preds = pd.read_parquet(run / "predictions.parquet")
    assert set(preds["variant"]) == {*summary["arms"], "mf", "lightgcn", "sasrec", "gsasrec"}
    assert summary["no_both_is_collm"]
