"""`reasonrec llm generate|score|templates` end to end on the tiny model (and the bundled one, slow)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from reasonrec.cli import app
from reasonrec.errors import ConfigError

runner = CliRunner()


def test_generate_and_score(tiny_model_path, tmp_path):
    args = ["llm", "generate", "--model", str(tiny_model_path), "-p", "Hello", "-p", "Hi there",
            "--max-new-tokens", "4", "--json", "--cache", str(tmp_path / "c.sqlite"), "-o", "threads=1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [r["prompt"] for r in rows] == ["Hello", "Hi there"] and all(r["cached"] == 0 for r in rows)
    again = [json.loads(line) for line in runner.invoke(app, args).stdout.splitlines() if line.startswith("{")]
    assert [r["texts"] for r in again] == [r["texts"] for r in rows] and all(r["cached"] == 1 for r in again)

    res = runner.invoke(app, ["llm", "score", "--model", str(tiny_model_path), "-p", "Yes or no?",
                              "--choices", "Yes,No,Maybe", "-o", "threads=1"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(row) == {"prompt", "Yes", "No", "Maybe"} and abs(row["Yes"] + row["No"] + row["Maybe"] - 1) < 1e-5


def test_bad_option_is_a_config_error(tiny_model_path):
    res = runner.invoke(app, ["llm", "generate", "--model", str(tiny_model_path), "-p", "x", "-o", "batch_sz=2"])
    assert isinstance(res.exception, ConfigError) and "batch_size" in str(res.exception)


def test_templates_lists_every_task():
    res = runner.invoke(app, ["llm", "templates"])
    assert res.exit_code == 0 and "starec_memory" in res.output and "TrackRec Fig. 4" in res.output


@pytest.mark.slow
def test_bundled_model_knows_paris():
    res = runner.invoke(app, ["llm", "generate", "--model", "smollm2-135m", "-p", "What is the capital of France?",
                              "--max-new-tokens", "24", "-o", "threads=1"])
    assert res.exit_code == 0, res.output
    assert "Paris" in res.output


@pytest.mark.slow
def test_bundled_model_scores_obvious_answers():
    from reasonrec.llm.base import load_llm

    llm = load_llm("smollm2-135m", threads=1)
    probs = llm.choice_probs(["What is the capital of France? Answer with one word."], ("Paris", "London"))
    assert probs[0, 0] > 0.9
    seq = llm.sequence_logprob(["What is the capital of France?"] * 2,
                               ["The capital of France is Paris.", "The capital of France is Berlin."])
    assert seq[0].total > seq[1].total + 3
