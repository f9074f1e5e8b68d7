"""Config drift on a real TrackRec run (ML-100K, the tiny random model as teacher, G and V; one round, no
ablations): rerunning into the same run directory with another config recomputes exactly the stages that read the
changed keys or a changed upstream artifact, and skips the rest — the LLM stages and trainings above all."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml

from reasonrec.methods import run_experiment

CONFIG = Path(__file__).parents[1] / "configs" / "trackrec" / "smoke.yaml"


def stage_lines(log: str) -> dict[str, str]:
    """stage → "complete, skipped", "running" (new), or its "inputs changed ..." line when it was recomputed."""
    out: dict[str, str] = {}
    for name, status in re.findall(r"stage ([\w/.-]+): (complete, skipped|running|inputs changed[^\n]*)", log):
        out[name] = out[name] if status == "running" and name in out else status
    return out


def markers(run: Path) -> dict[str, float]:
    """stage → mtime of its ``_SUCCESS.json``."""
    return {p.parent.relative_to(run).as_posix(): p.stat().st_mtime_ns for p in run.rglob("_SUCCESS.json")}


def _cache_rows(run: Path) -> int:
    with sqlite3.connect(run / "llm_cache.sqlite") as conn:
        return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]


def _rerun(path: Path, run: Path, cfg: dict, data_dir: Path) -> tuple[dict, dict[str, str]]:
    path.write_text(yaml.safe_dump(cfg))
    (run / "log.txt").unlink()
    summary = run_experiment(path, data_dir=data_dir)
    return summary, stage_lines((run / "log.txt").read_text())


@pytest.mark.slow  # three runs of one tiny round: ~100 s on 2 loaded cores (the default suite checks a late key
# change at the end of tests/test_trackrec_run.py::test_one_round_killed_mid_feedback_resumes_without_resampling)
def test_rerun_with_another_config_recomputes_only_what_reads_it(tmp_path, ml100k_dir):
    run = tmp_path / "run"
    cfg = {**yaml.safe_load(CONFIG.read_text()), "run_dir": str(run), "rounds": 1, "ablations": [],
           "baselines": ["backbone"]}
    path = tmp_path / "trackrec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = run_experiment(path, data_dir=ml100k_dir)
    g1 = first["arms"]["trackrec"][1]["G"]
    assert g1 == "trackrec-G1", "round 1 kept no preference group: the test needs a trained G₁"
    stages = set(stage_lines((run / "log.txt").read_text()))
    trains = {"train/G0", "train/trackrec-G1", "train/trackrec-V1"}
    llm = {"distill", "trackrec/r1/feedback", "cots/G0", f"cots/{g1}", "eval/G0-base", f"eval/{g1}-trackrec-V1",
           *trains}
    ctr = {"ctr/G0", f"ctr/{g1}", "ctr/none"}
    ctr_data = {"ctr_samples", "ctr_cots/G0", f"ctr_cots/{g1}"}  # the backbones' extra train samples and their CoTs
    assert stages == {"data", "samples", "rectune/trackrec-V1", *llm, *ctr_data, *ctr}
    before, rows = markers(run), _cache_rows(run)

    # A late key (the CTR seeds): only the CTR stages run again; no LLM call, no training
    cfg["rec"] = {**cfg["rec"], "seeds": [0, 1]}
    _, lines = _rerun(path, run, cfg, ml100k_dir)
    changed = {s for s, v in lines.items() if v != "complete, skipped"}
    assert changed == ctr, lines
    assert all("(rec.seeds)" in lines[s] for s in ctr), lines
    after = markers(run)
    assert {s for s in before if after[s] != before[s]} == ctr
    assert _cache_rows(run) == rows
    preds = pd.read_parquet(run / "predictions.parquet")
    assert set(preds.query("model == 'din'")["seed"]) == {0, 1}

    # An early key (the test samples): the samples stage and every stage that reads the test samples run again;
    # the trainings see the same train data (byte for byte) and are skipped
    cfg["subset"] = {**cfg["subset"], "test_samples": 14}
    third, lines = _rerun(path, run, cfg, ml100k_dir)
    assert lines["samples"].startswith("inputs changed") and "(subset.test_samples)" in lines["samples"], lines
    for s in ("cots/G0", f"cots/{g1}", "eval/G0-base", f"eval/{g1}-trackrec-V1", *ctr):
        assert lines[s].startswith("inputs changed") and "samples/test.parquet" in lines[s], (s, lines[s])
    # ctr_samples reads the test users (its pool is the subset's users): it is redrawn, the same rows come out, so
    # the extra CoTs that read it are skipped
    assert lines["ctr_samples"].startswith("inputs changed"), lines["ctr_samples"]
    kept = trains | (ctr_data - {"ctr_samples"})
    assert {s: lines[s] for s in kept} == dict.fromkeys(kept, "complete, skipped")
    assert {s for s, m in markers(run).items() if s in trains and m != after[s]} == set()
    assert third["data"]["test"] == 14
    preds = pd.read_parquet(run / "predictions.parquet")
    assert preds.groupby(["model", "variant", "seed"]).size().eq(14).all()
