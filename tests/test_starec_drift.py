"""Config drift on a real STARec run (ML-100K, the tiny random model as teacher and agent; teacher, SFT and
SFT + GRPO rows): another SFT learning rate re-trains ``train/sft`` and recomputes every stage of the agents built
on it (the SFT and STARec test replays and rankings, ``train/starec``), while the teacher's replays, ``sft_data``,
``grpo_data`` and the teacher's ranking are skipped."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml
from test_trackrec_drift import markers, stage_lines

from reasonrec.methods import run_experiment

CONFIG = Path(__file__).parents[1] / "configs" / "starec" / "smoke.yaml"


def _keys(run: Path) -> set[str]:
    with sqlite3.connect(run / "llm_cache.sqlite") as conn:
        return {k for (k,) in conn.execute("SELECT key FROM entries")}


@pytest.mark.slow  # two runs of the SFT + GRPO chain: ~3 min on 2 loaded cores (the default suite checks a late
# key at the end of tests/test_starec_run.py::test_replay_killed_mid_stage_resumes_without_replaying_a_user)
def test_another_sft_learning_rate_retrains_sft_and_what_builds_on_it(tmp_path, ml100k_dir):
    run = tmp_path / "run"
    cfg = {**yaml.safe_load(CONFIG.read_text()), "run_dir": str(run), "variants": ["teacher", "sft", "starec"],
           "baselines": [], "eval": {**yaml.safe_load(CONFIG.read_text())["eval"], "best_of_n": 0}}
    path = tmp_path / "starec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_experiment(path, data_dir=ml100k_dir)
    teacher = {"replay/teacher-reflect/train", "replay/teacher-reflect/test", "rank/teacher-reflect", "sft_data",
               "grpo_data"}
    built_on_sft = {"train/sft", "replay/sft-reflect/test", "rank/sft-reflect", "train/starec",
                    "replay/starec-reflect/test", "rank/starec-reflect"}
    assert set(stage_lines((run / "log.txt").read_text())) == {"data", "samples", *teacher, *built_on_sft}
    before, keys = markers(run), _keys(run)

    cfg["sft"] = {**cfg["sft"], "learning_rate": 5e-4}
    path.write_text(yaml.safe_dump(cfg))
    (run / "log.txt").unlink()
    run_experiment(path, data_dir=ml100k_dir)
    lines = stage_lines((run / "log.txt").read_text())
    changed = {s for s, v in lines.items() if v != "complete, skipped"}
    assert "(sft.learning_rate)" in lines["train/sft"], lines
    # the SFT adapter changed (a real step at 5e-4 instead of 1e-3), so every stage calling it, or continuing it
    assert changed == built_on_sft, lines
    assert {s for s, m in markers(run).items() if m != before[s]} == built_on_sft
    # the teacher's stages were skipped (no call); the re-trained agents asked new questions
    assert _keys(run) > keys
