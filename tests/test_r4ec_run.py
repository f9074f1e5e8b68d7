"""R4ec end to end on real ML-100K samples: construction → four real LoRA SFT runs on the tiny model →
both inference strategies → encoding with the bundled encoder → CTR backbones.

The run is first killed (SIGKILL) while inference is generating, then resumed in-process; a third run with the
inference markers removed must answer every LLM call from the cache. The teacher is scripted
(tests/_r4ec_teacher.py); actors, reflectors, trainers, encoder and backbones are the real ones.
"""

from __future__ import annotations

import html
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import _r4ec_teacher
import numpy as np
import pandas as pd
import pytest
import yaml

from reasonrec.methods import run_experiment

TESTS = Path(__file__).parent
SMOKE = TESTS.parent / "configs" / "r4ec" / "smoke.yaml"


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


def _smoke_config(tmp_path, ml100k_dir, tiny_model_path, **teacher) -> tuple[Path, Path]:
    """configs/r4ec/smoke.yaml with this machine's data, a temporary run dir and (optionally) another teacher."""
    cfg = yaml.safe_load(SMOKE.read_text())
    run = tmp_path / "run"
    cfg["run_dir"] = str(run)
    cfg["data"]["data_dir"] = str(ml100k_dir)
    cfg["teacher"].update(teacher)
    if teacher:  # the scripted teacher writes whole answers: it does not continue a primed opening tag
        cfg["generation"]["prime"] = False
    cfg["train"]["base_model"] = str(tiny_model_path)  # the tiny-random alias's folder
    path = tmp_path / "r4ec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, run


def test_r4ec_killed_resumed_and_cached(tmp_path, ml100k_dir, tiny_model_path, hash_teacher):
    """The smoke config with the scripted teacher, so that Algorithm 1 keeps data and all six adapters train."""
    path, run = _smoke_config(tmp_path, ml100k_dir, tiny_model_path, name="hash-teacher")

    committed = _kill_during_inference(path, run)
    summary = run_experiment(path)  # resumes: construct and train are complete, inference continues
    assert hash_teacher.calls == 0  # the teacher's work survived the kill
    assert _cache_rows(run / "llm_cache.sqlite") > committed

    branches = summary["branches"]
    from reasonrec.methods import load_experiment
    from reasonrec.methods.common import prepare_splits
    from reasonrec.methods.r4ec import KNOWLEDGE_VARIANTS, VARIANTS, sft_data
    from reasonrec.runs import RunDir

    _, cfg = load_experiment(path)
    ctx = prepare_splits(cfg.data, RunDir(run), subset=cfg.subset)
    construct = run / "construct"
    sets = json.loads((run / "train" / "sets.json").read_text())
    for side in ("user", "item"):
        b = branches[side]
        decided = sum(b.get(k, 0) for k in ("correct_reasonable", "wrong_unreasonable", "correct_unreasonable",
                                            "wrong_reasonable", "reason_unparsed", "reflect_unparsed"))
        assert decided == len(ctx.cases(side, cfg.subset.construct_fraction))  # every case takes one branch
        assert b.get("correct_reasonable", 0) > 0 and b.get("wrong_unreasonable", 0) > 0
        assert b["wrong_unreasonable"] == (b.get("refined_correct", 0) + b.get("refined_wrong", 0)
                                           + b.get("refine_unparsed", 0))
        # each adapter trained on the data the paper says: the actor on D_reason + D_refine (eq. 7-9), the
        # reflector on D_reflect (eq. 10), R²ec's actor on D_reason only (§4.1.4)
        keys = {n: pd.read_parquet(construct / f"{side}_{n}.parquet")["key"].tolist()
                for n in ("reason", "reflect", "refine")}
        assert sets[f"{side}_actor"]["keys"] == keys["reason"] + keys["refine"]
        assert sets[f"{side}_reflect"]["keys"] == keys["reflect"]
        assert sets[f"{side}_r2ec"]["keys"] == keys["reason"]
        assert len(sft_data(construct, side, "actor")) == len(keys["reason"]) + len(keys["refine"])
        for role in ("actor", "reflect"):
            assert (run / "train" / f"{side}_{role}" / "adapter" / "adapter_model.safetensors").exists()
        if keys["refine"]:  # a distinct R²ec actor only when refinement data exists
            assert (run / "train" / f"{side}_r2ec" / "adapter" / "adapter_model.safetensors").exists()
        inf = summary["inference"][side]
        assert inf["entities"] > 0 and 0 <= inf["unreasonable_after"] <= 1
        # KAR's row asks the un-tuned model; the others their trained adapters
        assert inf["adapters"] == {"kar": None, "r2ec": f"{side}_r2ec", "actor": f"{side}_actor",
                                   "reflector": f"{side}_reflect"}
    rec = summary["rec"]
    assert summary["connectors"] == {"base": None, "kar": "hybrid", "r2ec": "mlp", "r4ec_refine": "mlp",
                                     "r4ec_filter": "mlp"}
    for backbone in cfg.rec.backbones:
        assert set(rec[backbone]) == set(VARIANTS)
        for r in rec[backbone].values():
            assert 0 <= r["auc"] <= 1 and r["logloss"] > 0
    # every knowledge row has unit vectors for every entity it serves (row 0 is padding)
    for side, ids in (("user", ctx.first_sample_ts["user"]), ("item", ctx.first_sample_ts["item"])):
        enc = np.load(run / "encode" / f"{side}.npz")
        assert set(enc.files) == set(KNOWLEDGE_VARIANTS)
        for variant in KNOWLEDGE_VARIANTS:
            norms = np.linalg.norm(enc[variant][sorted(ids)], axis=1)
            assert np.allclose(norms, 1.0, atol=1e-4), (side, variant)
    assert (run / "results.md").read_text().count("| din |") == len(VARIANTS)
    manifest = json.loads((run / "manifest.json").read_text())
    assert "u.data" in " ".join(manifest["data_checksums"])
    # the report shows Algorithm 1's branches and every user's knowledge next to its test labels and scores
    from reasonrec.eval.report import write_report

    page = write_report([run]).read_text()
    assert 'data-plot="branches"' in page and 'data-plot="variants-auc"' in page
    user_texts = pd.read_parquet(run / "infer" / "user.parquet")
    assert "user knowledge" in page and "score r4ec_filter" in page
    assert html.escape(user_texts["r4ec_refine"].iloc[0][:40]) in page

    # A stage whose marker is gone runs again, and every LLM call comes from the cache.
    (run / "infer" / "_SUCCESS.json").unlink()
    (run / "rec" / "_SUCCESS.json").unlink()
    rows = _cache_rows(run / "llm_cache.sqlite")
    again = run_experiment(path)
    assert _cache_rows(run / "llm_cache.sqlite") == rows
    assert again["inference"] == summary["inference"]
    assert again["rec"]["din"]["base"]["auc"] == pytest.approx(rec["din"]["base"]["auc"])
