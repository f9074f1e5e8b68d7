"""Config drift on a real R4ec run (ML-100K, tiny model, scripted teacher): rerunning into the same run directory
with another config recomputes exactly the stages that read the changed keys, and ``results.json`` always
describes the ``config.yaml`` beside it."""

from __future__ import annotations

import json
import re

import _r4ec_teacher
import pytest
import yaml

from reasonrec.methods import run_experiment


@pytest.fixture
def hash_teacher(monkeypatch):
    return _r4ec_teacher.install(setattr=monkeypatch.setattr)


def _stage_lines(log: str) -> dict[str, str]:
    """stage → "complete, skipped", or its "inputs changed ..." line when it was recomputed."""
    out: dict[str, str] = {}
    for name, status in re.findall(r"stage (\w+): (complete, skipped|running|inputs changed[^\n]*)", log):
        out[name] = out.get(name) if status == "running" and name in out else status
    return out


@pytest.mark.slow  # trains the four adapters twice: ~3-4 min on 2 loaded cores
def test_rerun_with_another_config_recomputes_what_changed(tmp_path, ml100k_dir, tiny_model_path, hash_teacher):
    run = tmp_path / "run"
    cfg = {
        "method": "r4ec", "run_dir": str(run),
        "data": {"dataset": "ml-100k", "protocol": "kar", "data_dir": str(ml100k_dir)},
        "subset": {"users": 4, "items": 20, "construct_fraction": 1.0, "history_len": 3},
        "teacher": {"name": "hash-teacher"},
        "generation": {"max_new_tokens": 8, "max_attempts": 1, "max_refine_steps": 1, "filter_k": 1},
        "train": {"base_model": str(tiny_model_path), "epochs": 1, "batch_size": 8, "max_length": 512},
        "rec": {"backbones": ["din"], "seeds": [0], "epochs": 1, "batch_size": 64},
    }
    path = tmp_path / "r4ec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = run_experiment(path)
    assert set(first["rec"]) == {"din"}

    # A rec key: only the rec stage runs again, and the run-level results follow the new config.
    cfg["rec"]["backbones"] = ["dcn"]
    path.write_text(yaml.safe_dump(cfg))
    (run / "log.txt").unlink()
    calls = hash_teacher.calls
    second = run_experiment(path)
    stages = _stage_lines((run / "log.txt").read_text())
    assert {k: v.split(" (")[0] for k, v in stages.items()} == {
        "data": "complete, skipped", "construct": "complete, skipped", "train": "complete, skipped",
        "infer": "complete, skipped", "encode": "complete, skipped",
        "rec": "inputs changed since its last run"}
    assert "(rec.backbones)" in stages["rec"]
    assert set(second["rec"]) == {"dcn"} and hash_teacher.calls == calls
    on_disk = json.loads((run / "results.json").read_text())
    assert set(on_disk["rec"]) == set(yaml.safe_load((run / "config.yaml").read_text())["rec"]["backbones"])

    # A data key: everything downstream of the data is recomputed.
    cfg["subset"]["items"] = 30
    path.write_text(yaml.safe_dump(cfg))
    (run / "log.txt").unlink()
    third = run_experiment(path)
    stages = _stage_lines((run / "log.txt").read_text())
    assert stages["data"].startswith("inputs changed") and "(subset.items)" in stages["data"]
    assert all(stages[s].startswith("inputs changed") for s in ("construct", "train", "infer", "encode", "rec")), \
        stages
    assert third["data"]["items"] > first["data"]["items"] and third["data"]["train"] > first["data"]["train"]
