"""R4ec end to end on real ML-100K samples: construction → four real LoRA SFT runs on the tiny model →
both inference strategies → encoding with the bundled encoder → CTR backbones; then a resumed run that asks no
model anything twice.

The teacher is scripted (a random tiny model never writes the tagged format, so no branch would be reached);
the actors, reflectors, trainers, encoder and backbones are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import re

import pandas as pd
import pytest
import yaml

from reasonrec.llm import base as llm_base
from reasonrec.llm.base import Generation, as_messages
from reasonrec.methods import run_experiment


class HashTeacher:
    """Well-formed answers whose verdicts and judgements are a deterministic function of the prompt, so that a
    few dozen cases spread over every branch of Algorithm 1."""

    model_id = "hash-teacher"
    supports = frozenset({"generate"})

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=16, stop=None, seed=0, adapter=None):
        out = []
        for p in prompts:
            self.calls += 1
            text = "\n".join(m["content"] for m in as_messages(p))
            h = int(hashlib.sha256(f"{text}{seed}".encode()).hexdigest(), 16)
            side = "User Preference" if "User History>" in text and "Target User" not in text else "Item Fact"
            verdict = "user will like the target movie" if h % 2 else "user will not like the target movie"
            if "<Final Judgement>" in text:
                noun = "user preference" if side == "User Preference" else "item fact"
                ok = (h >> 3) % 2
                answer = (f"<Final Judgement>The {noun} is {'reasonable' if ok else 'not reasonable'}</Final Judgement>"
                          f"\n<Reflection>{'' if ok else 'Look at the low ratings.'}</Reflection>")
            elif "<Reflection>" in text:
                tag = "Refined " + side
                answer = f"<{tag}>Refined: likes {h % 7}.</{tag}>\n<Final Verdict>{verdict}</Final Verdict>"
            else:
                answer = f"<{side}>Likes genre {h % 5}.</{side}>\n<Final Verdict>{verdict}</Final Verdict>"
            assert re.search(r"Target (Movie Name|User History)", text)  # construction prompts carry the target
            out.append(Generation(texts=[answer], completion_tokens=[8]))
        return out


@pytest.fixture
def hash_teacher(monkeypatch):
    teacher = HashTeacher()
    real = llm_base.load_llm

    def load(name="smollm2-135m", backend="auto", cache=None, **options):
        if name == "hash-teacher":
            return teacher
        return real(name, backend=backend, cache=cache, **options)

    monkeypatch.setattr(llm_base, "load_llm", load)
    return teacher


def test_r4ec_end_to_end_and_resume(tmp_path, ml100k_dir, tiny_model_path, hash_teacher, monkeypatch):
    cfg = {
        "method": "r4ec", "run_dir": str(tmp_path / "run"),
        "data": {"dataset": "ml-100k", "protocol": "kar", "data_dir": str(ml100k_dir)},
        "subset": {"users": 10, "items": 40, "construct_fraction": 1.0, "history_len": 5},
        "teacher": {"name": "hash-teacher"},
        "generation": {"max_new_tokens": 8, "max_attempts": 1, "max_refine_steps": 1, "filter_k": 2},
        "train": {"base_model": str(tiny_model_path), "epochs": 1, "batch_size": 4, "max_length": 512},
        "rec": {"backbones": ["din", "dcn"], "seeds": [0], "epochs": 1, "batch_size": 64},
    }
    path = tmp_path / "r4ec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = run_experiment(path)
    run = tmp_path / "run"

    branches = summary["branches"]
    train = pd.read_parquet(run / "data" / "splits" / "train.parquet")
    for side in ("user", "item"):
        b = branches[side]
        decided = sum(b.get(k, 0) for k in ("correct_reasonable", "wrong_unreasonable", "correct_unreasonable",
                                            "wrong_reasonable", "reason_unparsed", "reflect_unparsed"))
        assert decided == train[f"{side}_id"].nunique()  # every case takes exactly one branch
        assert b.get("correct_reasonable", 0) > 0 and b.get("wrong_unreasonable", 0) > 0
        assert b["wrong_unreasonable"] == b.get("refined_correct", 0) + b.get("refined_wrong", 0) + b.get("refine_unparsed", 0)
        # four real adapters were trained on what Algorithm 1 kept
        for role in ("actor", "reflect"):
            assert (run / "train" / f"{side}_{role}" / "adapter" / "adapter_model.safetensors").exists()
        inf = summary["inference"][side]
        assert inf["entities"] > 0 and 0 <= inf["unreasonable_after"] <= 1
    rec = summary["rec"]
    for backbone in ("din", "dcn"):
        assert set(rec[backbone]) == {"base", "system1", "refine", "filter"}
        for r in rec[backbone].values():
            assert 0 <= r["auc"] <= 1 and r["logloss"] > 0
    assert (run / "results.md").read_text().count("| din |") == 4
    manifest = json.loads((run / "manifest.json").read_text())
    assert "u.data" in " ".join(manifest["data_checksums"])

    # Resume: a stage whose marker is gone runs again but its LLM calls all come from the cache.
    (run / "infer" / "_SUCCESS.json").unlink()
    (run / "rec" / "_SUCCESS.json").unlink()
    calls = hash_teacher.calls
    again = run_experiment(path)
    assert hash_teacher.calls == calls  # construct was complete: the teacher was not asked again
    assert again["inference"] == summary["inference"]
    assert again["rec"]["din"]["base"]["auc"] == pytest.approx(rec["din"]["base"]["auc"])
