"""TrackRec end to end on real ML-100K samples with the tiny random model (real tokenizer) as teacher, G and V.

- One full round, SIGKILLed while round 1 samples CoTs and resumed in-process: no CoT (or V score) is computed
  twice; G and V were really trained (their LoRA weights changed; G₁ differs from its reference G₀). Then a
  late config key changes: only the stages that read it run again (tests/test_trackrec_drift.py: more keys).
- ``slow``: configs/trackrec/smoke.yaml as shipped (two rounds, ablations, baselines): round 2 continues from
  round 1; every arm and baseline is evaluated on the same test samples.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_trackrec_drift import markers as _markers
from test_trackrec_drift import stage_lines

from reasonrec.eval.results import read_results
from reasonrec.llm import cache
from reasonrec.methods import run_experiment
from reasonrec.train.common import adapter_weights

CONFIG = Path(__file__).parents[1] / "configs" / "trackrec" / "smoke.yaml"


def _rows(path: Path, kind: str | None) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as conn:
        try:
            if kind is None:
                return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            return conn.execute("SELECT COUNT(*) FROM entries WHERE kind = ?", (kind,)).fetchone()[0]
        except sqlite3.OperationalError:   # the table is not created yet
            return 0


def _kill_in_round_1(config: Path, run: Path, data_dir: Path) -> int:
    """Run the config in a subprocess; SIGKILL it once round 1's feedback has committed sampled CoTs."""
    code = "import sys; from reasonrec.methods import run_experiment; run_experiment(sys.argv[1])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "REASONREC_DATA_DIR": str(data_dir)})
    deadline, committed, before = time.time() + 900, 0, None
    try:
        while proc.poll() is None and time.time() < deadline:
            log = run / "log.txt"
            if log.exists() and "stage trackrec/r1/feedback: running" in log.read_text():
                now = _rows(run / "llm_cache.sqlite", "generate")
                before = now if before is None else before
                if now > before:   # some of round 1's samples are committed, the rest are not
                    committed = now
                    break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert committed, f"the run ended (exit {proc.returncode}) before round 1 committed a sampled CoT"
    assert not (run / "trackrec" / "r1" / "feedback" / "_SUCCESS.json").exists()
    return committed


def _config(tmp_path: Path, **overrides) -> tuple[Path, Path]:
    run = tmp_path / "run"
    cfg = {**yaml.safe_load(CONFIG.read_text()), "run_dir": str(run), **overrides}
    path = tmp_path / "trackrec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, run


def _trained(folder: Path) -> dict:
    tensors = adapter_weights(folder / "adapter")
    # a fresh LoRA has B = 0: a non-zero B means the trainer moved it
    assert any(float(t.abs().sum()) > 0 for k, t in tensors.items() if "lora_B" in k), folder
    return tensors


def _differ(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return any(not np.allclose(a[k].numpy(), b[k].numpy()) for k in a)


def test_one_round_killed_mid_feedback_resumes_without_resampling(tmp_path, ml100k_dir, monkeypatch):
    """One full tiny round (distillation → Alg. 1 → S-DPO → CoTs → Rec-tuning → V and DIN), SIGKILLed while
    round 1 samples CoTs, then resumed: every LLM row computed after the kill is a new cache row."""
    model = {**yaml.safe_load(CONFIG.read_text())["model"], "options": {"batch_size": 2}}  # kill between commits
    path, run = _config(tmp_path, rounds=1, ablations=[], baselines=[], model=model)
    _kill_in_round_1(path, run, ml100k_dir)
    with sqlite3.connect(run / "llm_cache.sqlite", timeout=30) as conn:   # read after the process is gone
        committed = {k: kind for k, kind in conn.execute("SELECT key, kind FROM entries")}
    assert sum(k == "generate" for k in committed.values()) > 6   # the teacher's CoTs and some of round 1's

    written: list[tuple[str, str]] = []   # every row the resumed run computes and commits
    real_put = cache.GenerationCache.put_many

    def put_many(self, rows):
        written.extend((key, kind) for key, kind, _, _ in rows)
        return real_put(self, rows)

    monkeypatch.setattr(cache.GenerationCache, "put_many", put_many)
    summary = run_experiment(path, data_dir=ml100k_dir)

    # no CoT and no V score committed before the kill was computed again; the rest of round 1 was
    assert written and not {k for k, _ in written} & set(committed)
    assert {kind for _, kind in written} == {"generate", "choice_probs"}
    assert len(committed) + len({k for k, _ in written}) == _rows(run / "llm_cache.sqlite", None)
    g0, g1 = _trained(run / "train" / "G0"), _trained(run / "train" / "trackrec-G1")
    assert _differ(g0, g1)                            # S-DPO moved G away from its reference G₀
    _trained(run / "train" / "trackrec-V1")
    (r0, r1), = [summary["arms"]["trackrec"]]
    assert (r0["G"], r0["V"], r1["G"], r1["V"]) == ("G0", "base", "trackrec-G1", "trackrec-V1")
    assert 0 <= r1["skipped_share"] <= 1 and r1["reward_chosen"] >= r1["reward_rejected"]
    for r in (r0, r1):
        assert 0 <= r["v_auc"] <= 1 and r["v_auc_ci"][0] <= r["v_auc_ci"][1]
        assert r["ctr"]["din"]["logloss"] > 0 and r["cot_tokens"] > 0 and r["cot_empty_share"] < 1
    # DIN trained on the LLM train samples plus rec.train_samples' extra ones, each extra with G's own CoT
    llm_train = set(pd.read_parquet(run / "samples" / "train.parquet")["sample"])
    for g in ("G0", "trackrec-G1"):
        extra = pd.read_parquet(run / "ctr_cots" / g / "cots.parquet")
        assert len(extra) == 16 and not set(extra["sample"]) & llm_train and extra["cot"].str.len().gt(0).any()
    assert summary["data"]["ctr_train"] == 40 and summary["data"]["train"] == 24
    res, _ = read_results(run / "results.json")
    (delta,) = [d for d in res.deltas if (d.model, d.metric, d.subgroup) == ("validator", "auc", "all")]
    assert delta.variant == "trackrec/r1" and delta.reference == "trackrec/r0"
    assert delta.value == pytest.approx(r1["v_auc"] - r0["v_auc"])

    # config drift: another late key (the CTR seeds) recomputes the CTR stages only; no LLM row, no training
    before = _markers(run)
    cfg = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**cfg, "rec": {**cfg["rec"], "seeds": [0, 1]}}))
    (run / "log.txt").unlink()
    n_written = len(written)
    again = run_experiment(path, data_dir=ml100k_dir)
    lines = stage_lines((run / "log.txt").read_text())
    ctr = {"ctr/G0", "ctr/trackrec-G1"}
    assert {s for s, v in lines.items() if v != "complete, skipped"} == ctr, lines
    assert all("(rec.seeds)" in lines[s] for s in ctr) and len(written) == n_written
    after = _markers(run)
    assert {s for s in before if after[s] != before[s]} == ctr
    assert again["arms"]["trackrec"][1]["v_auc"] == r1["v_auc"]   # V's scores were not recomputed
    assert set(pd.read_parquet(run / "predictions.parquet").query("model == 'din'")["seed"]) == {0, 1}


@pytest.mark.slow
def test_smoke_config_end_to_end(tmp_path, ml100k_dir):
    """The shipped smoke config: two rounds, the three ablations and the three baselines on the same samples."""
    path, run = _config(tmp_path)
    summary = run_experiment(path, data_dir=ml100k_dir)
    train = run / "train"
    w = {n: _trained(train / n) for n in ("G0", "trackrec-G1", "trackrec-G2", "trackrec-V1", "trackrec-V2",
                                          "no_align-V1", "no_distill-G1", "no_distill-V1", "tallrec")}
    assert _differ(w["trackrec-G1"], w["trackrec-G2"]) and _differ(w["trackrec-V1"], w["trackrec-V2"])
    assert not (train / "no_rectune-V1").exists()   # the ablation never tunes V
    arms = summary["arms"]
    assert set(arms) == {"trackrec", "no_align", "no_distill", "no_rectune"}
    assert [r["round"] for r in arms["trackrec"]] == [0, 1, 2]
    assert arms["no_distill"][0]["G"] == "base" and arms["no_align"][1]["G"] == "G0"
    assert arms["no_rectune"][1]["V"] == "base"
    assert set(summary["baselines"]) == {"backbone", "tallrec", "zero_shot", "kar"}
    assert summary["baselines"]["kar"]["ctr"] == arms["trackrec"][0]["ctr"]
    preds = pd.read_parquet(run / "predictions.parquet")   # same test samples for every model, variant, seed
    assert preds.groupby(["model", "variant", "seed"]).size().eq(summary["data"]["test"]).all()
    assert {"trackrec/r2", "no_rectune/r1", "zero_shot", "tallrec"} <= set(preds.query("model == 'validator'")["variant"])
    assert {"trackrec/r2", "backbone"} <= set(preds.query("model == 'din'")["variant"])
    res, _ = read_results(run / "results.json")   # the shared schema, every variant vs trackrec/r0
    assert {d.variant for d in res.deltas if d.model == "validator" and d.metric == "auc"} >= {"trackrec/r2", "tallrec"}
    md = (run / "results.md").read_text()
    assert md.count("| trackrec |") == 3 and "baseline:tallrec" in md


@pytest.mark.parametrize("key,value", [("rounds", 0), ("ablations", ["no_rectun"])])
def test_config_rejects_bad_values(tmp_path, key, value):
    from reasonrec.errors import ConfigError
    from reasonrec.methods import load_experiment

    cfg = yaml.safe_load(CONFIG.read_text())
    cfg[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=key):
        load_experiment(path)
