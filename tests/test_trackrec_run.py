"""TrackRec end to end: configs/trackrec/smoke.yaml as shipped (tiny random model for teacher, G and V; real ML-100K
samples), killed with SIGKILL while round 1 samples CoTs, then resumed in-process.

Checks: no CoT (or V score) is computed twice across the kill; every stage ran; G and V were really trained
(their LoRA weights changed, round 2 continues from round 1); results carry every round, ablation and baseline.
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

from reasonrec.llm import hf
from reasonrec.methods import run_experiment
from reasonrec.train.common import adapter_weights

CONFIG = Path(__file__).parents[1] / "configs" / "trackrec" / "smoke.yaml"


def _rows(path: Path, kind: str) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as conn:
        try:
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


def test_smoke_config_killed_in_round_1_resumes_without_resampling(tmp_path, ml100k_dir, monkeypatch):
    run = tmp_path / "run"
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["run_dir"] = str(run)
    cfg["model"]["options"] = {"batch_size": 2}   # small cache chunks, so the kill lands between two commits
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(cfg))
    committed = {k: _rows(run / "llm_cache.sqlite", k) for k in ("generate", "choice_probs")}
    committed["generate"] = _kill_in_round_1(path, run, ml100k_dir)
    committed["choice_probs"] = _rows(run / "llm_cache.sqlite", "choice_probs")

    computed = {"generate": 0, "choice_probs": 0}   # what the resumed run asks the model for
    real_generate, real_choice = hf.TransformersLLM.generate, hf.TransformersLLM.choice_probs

    def generate(self, prompts, n=1, **kw):
        computed["generate"] += len(prompts) * n
        return real_generate(self, prompts, n=n, **kw)

    def choice_probs(self, prompts, *a, **kw):
        computed["choice_probs"] += len(prompts)
        return real_choice(self, prompts, *a, **kw)

    monkeypatch.setattr(hf.TransformersLLM, "generate", generate)
    monkeypatch.setattr(hf.TransformersLLM, "choice_probs", choice_probs)
    summary = run_experiment(path, data_dir=ml100k_dir)

    for kind in ("generate", "choice_probs"):   # each row computed after the kill is new: none was redone
        assert computed[kind] > 0
        assert committed[kind] + computed[kind] == _rows(run / "llm_cache.sqlite", kind)

    # every stage of Alg. 2 ran, and both models were trained and inherited
    train = run / "train"
    w = {name: adapter_weights(train / name / "adapter") for name in
         ("G0", "trackrec-G1", "trackrec-G2", "trackrec-V1", "trackrec-V2", "tallrec")}
    for name, tensors in w.items():   # a fresh LoRA has B = 0: non-zero B means the trainer moved it
        assert any(float(t.abs().sum()) > 0 for k, t in tensors.items() if "lora_B" in k), name
    for a, b in (("G0", "trackrec-G1"), ("trackrec-G1", "trackrec-G2"), ("trackrec-V1", "trackrec-V2")):
        assert w[a].keys() == w[b].keys()
        assert any(not np.allclose(w[a][k].numpy(), w[b][k].numpy()) for k in w[a]), (a, b)
    assert not (train / "no_rectune-V1").exists()   # the ablation never tunes V

    arms = summary["arms"]
    assert [r["round"] for r in arms["trackrec"]] == [0, 1, 2]
    assert set(arms) == {"trackrec", "no_align", "no_distill", "no_rectune"}
    assert arms["no_distill"][0]["G"] == "base" and arms["no_align"][1]["G"] == "G0"
    for r in [x for rows in arms.values() for x in rows]:
        assert 0 <= r["v_auc"] <= 1 and r["v_auc_ci"][0] <= r["v_auc_ci"][1]
        assert r["ctr"]["din"]["logloss"] > 0 and r["cot_tokens"] > 0
    r1 = arms["trackrec"][1]
    assert 0 <= r1["skipped_share"] <= 1 and r1["reward_chosen"] >= r1["reward_rejected"]
    assert set(summary["baselines"]) == {"backbone", "tallrec", "zero_shot", "kar"}
    assert summary["baselines"]["kar"]["ctr"] == arms["trackrec"][0]["ctr"]
    assert all(r["cot_empty_share"] < 1 for r in arms["trackrec"])   # the CoT field carries text
    preds = pd.read_parquet(run / "predictions.parquet")
    assert preds.groupby("variant").size().eq(summary["data"]["test"]).all()   # same test samples everywhere
    assert {"trackrec/r2", "no_rectune/r1", "zero_shot", "tallrec"} <= set(preds["variant"])
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
