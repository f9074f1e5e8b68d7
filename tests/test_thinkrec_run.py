"""ThinkRec end to end on real ML-100K samples with the tiny random model (real tokenizer) as teacher and LLM.

- Default: every stage kind (keywords, MF, reasoning synthesis, think + label LoRAs, experts, projectors, routed
  scoring, generated reasons, reason metrics) with one ablation and two baselines, SIGKILLed while the teacher
  writes reasons and resumed in-process: no teacher row committed before the kill is generated again; the
  LoRAs, experts and projector were really trained; results.json holds every arm on the same test samples. Then a
  late config key (the gate's temperature) changes: only the scoring of the arm with experts runs again; no
  teacher call, no training.
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
from test_trackrec_drift import markers, stage_lines

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

    # config drift: the gate's temperature is read when scoring the arm with experts only (its reason metrics
    # follow when its generated reasons changed); the teacher, the data and every training are skipped
    before, rows = markers(run), _rows(run / "llm_cache.sqlite")
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "experts": {**raw.get("experts", {}), "tau": 0.5}}))
    (run / "log.txt").unlink()
    n_written = len(written)
    again = run_experiment(path, data_dir=ml100k_dir)
    lines = stage_lines((run / "log.txt").read_text())
    changed = {s for s, v in lines.items() if v != "complete, skipped"}
    assert "eval/thinkrec" in changed and changed <= {"eval/thinkrec", "reason_quality/thinkrec"}, lines
    assert "(experts.tau)" in lines["eval/thinkrec"]
    assert {s for s, m in markers(run).items() if m != before[s]} == changed
    assert len(written) == n_written and _rows(run / "llm_cache.sqlite") == rows
    assert {s for s in lines if s.startswith("train/")} == {
        "train/lora-think", "train/lora-label", "train/experts-think", "train/projector-think",
        "train/projector-label"}
    assert again["routes"]["no_experts"] == summary["routes"]["no_experts"]


@pytest.mark.slow
def test_smoke_config_end_to_end(tmp_path, ml100k_dir):
    path, run = _config(tmp_path)
    summary = run_experiment(path, data_dir=ml100k_dir)
    assert set(summary["arms"]) == {"thinkrec", "no_think", "no_experts", "tallrec", "collm"}
    preds = pd.read_parquet(run / "predictions.parquet")
    assert set(preds["variant"]) == {*summary["arms"], "mf", "lightgcn", "sasrec", "gsasrec"}
    assert summary["no_both_is_collm"]
