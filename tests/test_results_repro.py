"""Reproducibility: the same config and seed give a bit-identical results.json.

* default: the knowledge → CTR → results path on a real ML-100K kar subset (real backbones, two seeds, a
  knowledge variant of fixed random vectors), run twice into two run directories;
* slow: a whole small R4ec config (real ML-100K samples, the tiny model's four LoRA SFT runs, the bundled
  encoder, real CTR backbones; a scripted teacher, tests/_r4ec_teacher.py) run twice: 11 min on a loaded
  2-core machine. Only timings.json differs between the two runs.
"""

from __future__ import annotations

import _r4ec_teacher
import numpy as np
import pandas as pd
import pytest
import yaml

from reasonrec.config import DataSection
from reasonrec.eval import results as R
from reasonrec.methods import run_experiment
from reasonrec.methods.common import prepare_splits, train_knowledge_backbones
from reasonrec.methods.r4ec import RecSection, SubsetSection
from reasonrec.runs import RunDir, package_versions


@pytest.fixture
def hash_teacher(monkeypatch):
    return _r4ec_teacher.install(setattr=monkeypatch.setattr)


def _ctr_results(root, ml100k_dir) -> bytes:
    data = DataSection(dataset="ml-100k", protocol="kar", data_dir=ml100k_dir)
    ctx = prepare_splits(data, RunDir(root, verbose=False), subset=SubsetSection(users=30, items=60))
    rng = np.random.default_rng(0)
    knowledge = {"rand": {"user": rng.normal(size=(ctx.n_entities("user") + 1, 8)).astype(np.float32),
                          "item": rng.normal(size=(ctx.n_entities("item") + 1, 8)).astype(np.float32)}}
    rec = RecSection(backbones=["din"], seeds=[0, 1], epochs=2, batch_size=64)
    preds: list[pd.DataFrame] = []
    train_knowledge_backbones(ctx.splits, ctx.tables, {"base": None, **knowledge}, rec, predictions=preds)
    splits = ctx.splits
    res = R.build_results(
        R.attach_subgroups(pd.concat(preds, ignore_index=True), splits.test, splits.train),
        R.ResultsSection(n_boot=100), method="r4ec", dataset=splits.dataset, protocol=splits.protocol,
        split_checksum=R.split_checksum({"train": splits.train, "valid": splits.valid, "test": splits.test}),
        config={"run_dir": str(root), "rec": rec.model_dump(mode="json")}, packages=package_versions())
    R.write_results(root, res)
    return (root / "results.json").read_bytes()


def test_ctr_results_are_bit_identical_across_two_runs(tmp_path, ml100k_dir):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared machine: one thread is fastest
    try:
        a, b = _ctr_results(tmp_path / "a", ml100k_dir), _ctr_results(tmp_path / "b", ml100k_dir)
    finally:
        torch.set_num_threads(threads)
    assert a == b
    res, _ = R.read_results(tmp_path / "a")
    assert {r.model for r in res.rows} == {"din"}
    everyone = [d for d in res.deltas if d.subgroup == "all"]
    assert {d.variant for d in everyone} == {"rand"} and all(d.p_value is not None for d in everyone)


@pytest.mark.slow
def test_same_config_and_seed_give_bit_identical_results(tmp_path, ml100k_dir, tiny_model_path, hash_teacher):
    cfg = {
        "method": "r4ec",
        "data": {"dataset": "ml-100k", "protocol": "kar", "data_dir": str(ml100k_dir)},
        "subset": {"users": 8, "items": 30, "construct_fraction": 1.0, "history_len": 5},
        "teacher": {"name": "hash-teacher"},
        "generation": {"max_new_tokens": 8, "max_attempts": 1, "max_refine_steps": 1, "filter_k": 2},
        "train": {"base_model": str(tiny_model_path), "epochs": 1, "batch_size": 4, "max_length": 512},
        "rec": {"backbones": ["din"], "seeds": [0, 1], "epochs": 2, "batch_size": 64},
        "results": {"n_boot": 200, "min_users": 2},  # 8 users: intervals only to check they are written
    }
    files = {}
    for name in ("a", "b"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "run_dir": str(tmp_path / name)}))
        run_experiment(path)
        files[name] = (tmp_path / name / "results.json").read_bytes()
    assert files["a"] == files["b"]

    run = tmp_path / "a"
    res, timings = R.read_results(run)
    assert {"data", "construct", "infer", "encode", "rec"} <= set(timings.stage_seconds)
    preds = pd.read_parquet(run / res.predictions)
    assert len(preds) == 4 * 2 * len(pd.read_parquet(run / "data" / "splits" / "test.parquet"))  # variants × seeds
    variants = list(pd.unique(preds["variant"]))
    assert variants[0] == "base" and len(variants) == 4
    auc = res.row("din", "base", "auc")
    assert auc.seeds == [0, 1] and auc.ci_low <= auc.ci_high and auc.n == len(preds) // 8
    deltas = {d.variant for d in res.deltas if d.metric == "auc" and d.subgroup == "all"}
    assert deltas == set(variants) - {"base"}
    assert "| din | base |" in (run / "results.md").read_text()
    R.check_comparable(res, R.read_results(tmp_path / "b")[0])
