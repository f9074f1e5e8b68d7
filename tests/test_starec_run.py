"""STARec end to end on real ML-100K lists with the tiny random model (real tokenizer) as teacher and agent.

- The slow-thinking replay, SIGKILLed after some users were committed and resumed: no committed user is replayed
  again, their memory lines are byte-identical, every user ends with one record and versions 0..k. Then a late
  config key (a classic baseline's hyper-parameter) changes: only that baseline's stage runs again, no LLM call.
- configs/starec/smoke.yaml as shipped: every stage (teacher replay, screening + rethink, SFT, GRPO with both
  rewards, w/o SFT, test replays, rankings, Best of N, LLMRank, AgentCF, the classic baselines) and one results
  table on the same test users and negatives.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_trackrec_drift import markers, stage_lines

from reasonrec.eval.results import read_results
from reasonrec.methods import run_experiment
from reasonrec.methods import starec_steps as steps

CONFIG = Path(__file__).parents[1] / "configs" / "starec" / "smoke.yaml"


def _config(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["run_dir"] = str(tmp_path / "run")
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[section] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_replay_killed_mid_stage_resumes_without_replaying_a_user(tmp_path, ml100k_dir, monkeypatch):
    path = _config(tmp_path, **{"variants": ["teacher"], "baselines": ["pop"], "subset.test_users": 3,
                                "eval.best_of_n": 0})
    memories = tmp_path / "run" / "replay" / "teacher-reflect" / "test" / "memories.jsonl"
    code = "import sys; from reasonrec.methods import run_experiment; run_experiment(sys.argv[1])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "REASONREC_DATA_DIR": str(ml100k_dir)})
    deadline = time.time() + 600
    try:
        while proc.poll() is None and time.time() < deadline:
            if memories.exists() and memories.read_bytes().count(b"\n") >= 1:   # 1 of 3 users committed
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    before = memories.read_bytes()
    committed = {json.loads(line)["user_id"] for line in before.splitlines() if line.endswith(b"}")}
    assert 1 <= len(committed) < 3, "the kill came too late (or too early) to test resumption"
    assert not (memories.parent / "_SUCCESS.json").exists()

    replayed: list[int] = []
    real = steps.replay

    def spy(llm, domain, cases, **kw):
        replayed.extend(c.memory.user_id for c in cases)
        return real(llm, domain, cases, **kw)

    monkeypatch.setattr(steps, "replay", spy)
    run_experiment(path, data_dir=ml100k_dir)
    assert not committed & set(replayed), (committed, replayed)        # no committed user replayed again
    after = memories.read_bytes()
    good = b"".join(line for line in before.splitlines(keepends=True) if line.endswith(b"\n"))
    assert after.startswith(good)                                       # committed memories intact
    mem = pd.read_parquet(memories.parent / "memories.parquet")
    assert mem["user_id"].nunique() == 3
    for _, g in mem.groupby("user_id"):
        assert g["version"].tolist() == list(range(len(g))) and g["cause"].iloc[0] == "init"
    run = tmp_path / "run"
    res, _ = read_results(run)
    assert {r.variant for r in res.rows} == {"teacher", "pop"}

    # config drift: a baseline's hyper-parameter is read by baseline/pop alone; the replay and ranking are skipped
    before, rows = markers(run), _cache_rows(run)
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "baseline": {**raw.get("baseline", {}), "weight_decay": 1e-4}}))
    (run / "log.txt").unlink()
    replayed.clear()
    run_experiment(path, data_dir=ml100k_dir)
    lines = stage_lines((run / "log.txt").read_text())
    assert {s for s, v in lines.items() if v != "complete, skipped"} == {"baseline/pop"}, lines
    assert "(baseline)" in lines["baseline/pop"] and not replayed
    assert {s for s, m in markers(run).items() if m != before[s]} == {"baseline/pop"}
    assert _cache_rows(run) == rows


def _cache_rows(run: Path) -> int:
    with sqlite3.connect(run / "llm_cache.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]


@pytest.mark.slow
def test_smoke_config_end_to_end(tmp_path, ml100k_dir):
    path = _config(tmp_path)
    t0 = time.time()
    summary = run_experiment(path, data_dir=ml100k_dir)
    run = tmp_path / "run"
    res, _ = read_results(run)
    raw = yaml.safe_load(CONFIG.read_text())
    want = {*raw.get("variants", ["teacher", "sft", "starec", "no_reflection", "no_sft", "llmrank", "agentcf"]),
            "sft/best_of_2", "pop", "bpr", "bpr_full", "gru4rec", "gru4rec_full", "sasrec", "sasrec_full"}
    assert {r.variant for r in res.rows} == want
    assert {r.metric for r in res.rows} == {"ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20"}
    assert any(r.subgroup.startswith("activity:") for r in res.rows)
    preds = pd.read_parquet(run / "predictions.parquet")
    per = preds.groupby("variant")[["sample", "user_id", "label"]].apply(lambda d: tuple(map(tuple, d.values)))
    assert per.nunique() == 1                                  # every row on the same users and negatives
    assert preds["seed"].nunique() == 2                        # the smoke protocol's negative draws
    # slow thinking wrote versions; SFT anchoring screened; GRPO trained both adapters
    mem = pd.read_parquet(run / "replay" / "teacher-reflect" / "train" / "memories.parquet")
    assert mem.groupby("user_id")["version"].max().min() >= 1
    assert summary["sft_data"]["candidates"] > 0 and "rejected_first_pass" in summary["sft_data"]
    for name in ("sft", "starec", "no_sft"):
        assert (run / "train" / name).is_dir()
    assert "NDCG@10" in (run / "results.md").read_text()
    print(f"smoke run: {time.time() - t0:.0f} s")
