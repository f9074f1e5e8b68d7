"""The persistent generation cache: reruns never reach the model; a kill -9 loses at most the batch in flight."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from reasonrec.llm.base import load_llm
from reasonrec.llm.cache import CachedLLM

REPO = Path(__file__).resolve().parents[1]


class Counting:
    """Passes calls to a real backend and counts the prompts it was asked about."""

    def __init__(self, inner):
        self.inner, self.model_id, self.supports = inner, inner.model_id, inner.supports
        self.options = inner.options
        self.asked = 0

    def format(self, prompt):
        return self.inner.format(prompt)

    def adapter_id(self, name):
        return self.inner.adapter_id(name)

    def generate(self, prompts, **kw):
        self.asked += len(prompts)
        return self.inner.generate(prompts, **kw)

    def choice_probs(self, prompts, choices=("Yes", "No"), adapter=None):
        self.asked += len(prompts)
        return self.inner.choice_probs(prompts, choices, adapter=adapter)

    def sequence_logprob(self, prompts, completions, adapter=None):
        self.asked += len(prompts)
        return self.inner.sequence_logprob(prompts, completions, adapter=adapter)


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return load_llm(str(tiny_model_path), batch_size=4, threads=1)


def test_rerun_is_answered_from_the_cache(tiny, tmp_path):
    prompts = [f"Describe movie number {i}." for i in range(6)]
    counting = Counting(tiny)
    cached = CachedLLM(counting, tmp_path / "gen.sqlite", progress=False)
    first = cached.generate(prompts, n=2, temperature=1.0, max_new_tokens=6, seed=3)
    assert counting.asked == 6 and all(g.cached == 0 for g in first)
    # A new process-level object on the same file: the rerun never asks the model.
    counting2 = Counting(tiny)
    again = CachedLLM(counting2, tmp_path / "gen.sqlite", progress=False).generate(
        prompts, n=2, temperature=1.0, max_new_tokens=6, seed=3)
    assert counting2.asked == 0
    assert [g.texts for g in again] == [g.texts for g in first] and all(g.cached == 2 for g in again)
    assert [g.completion_tokens for g in again] == [g.completion_tokens for g in first]
    # Any change of parameters, prompt or sample count is a different question.
    cached2 = CachedLLM(counting2, tmp_path / "gen.sqlite", progress=False)
    cached2.generate(prompts, n=2, temperature=1.0, max_new_tokens=7, seed=3)
    assert counting2.asked == 6
    cached2.generate(prompts[:2] + ["A new prompt"], n=2, temperature=1.0, max_new_tokens=7, seed=3)
    assert counting2.asked == 7


def test_scores_are_cached_too(tiny, tmp_path):
    counting = Counting(tiny)
    cached = CachedLLM(counting, tmp_path / "c.sqlite", progress=False)
    p1 = cached.choice_probs(["Yes or no?", "Maybe?"], ("Yes", "No"))
    s1 = cached.sequence_logprob(["Hi"], ["Hello"])
    asked = counting.asked
    p2 = cached.choice_probs(["Yes or no?", "Maybe?"], ("Yes", "No"))
    s2 = cached.sequence_logprob(["Hi"], ["Hello"])
    assert counting.asked == asked
    assert np.allclose(p1, p2) and s1[0].total == s2[0].total and s1[0].token_logps == s2[0].token_logps
    cached.choice_probs(["Yes or no?"], ("Yes", "No", "Maybe"))  # other choices → a new question
    assert counting.asked == asked + 1


def test_progress_bar_shows_items_tokens_per_second_and_hits(tiny, tmp_path, capsys):
    cached = CachedLLM(tiny, tmp_path / "p.sqlite", chunk_size=2, progress=True)
    prompts = [f"Describe movie number {i}." for i in range(4)]
    cached.generate(prompts[:2], max_new_tokens=3)
    capsys.readouterr()
    cached.generate(prompts, max_new_tokens=3)  # two hits, two new
    err = capsys.readouterr().err
    assert "4/4" in err and "item" in err and "tok_s=" in err and "cache_hits=2" in err, err
    assert cached.stats["hits"] == 2 and cached.stats["misses"] == 4


CHILD = textwrap.dedent("""
    import sys
    from reasonrec.llm.base import load_llm
    from reasonrec.llm.cache import CachedLLM
    llm = CachedLLM(load_llm(sys.argv[1], batch_size=2, threads=1), sys.argv[2], chunk_size=2, progress=False)
    prompts = [f"Summarise the taste of user {i}." for i in range(int(sys.argv[3]))]
    print("started", flush=True)
    llm.generate(prompts, n=2, temperature=1.0, max_new_tokens=8, seed=0)
    print("finished", flush=True)
""")


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def test_kill_9_loses_at_most_the_batch_in_flight(tiny_model_path, tmp_path):
    # 400 prompts take the child several seconds; it is killed as soon as three chunks are committed.
    db, total, n, chunk = tmp_path / "gen.sqlite", 400, 2, 2
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_model_path), str(db), str(total)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _rows(db) < 3 * chunk * n and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    saved = _rows(db)
    assert 3 * chunk * n <= saved < total * n, "kill landed outside the run; make the run longer"
    # Whole batches only: every prompt has all its n samples or none, and batches are complete.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert saved % (chunk * n) == 0
    done = saved // n  # prompts are sent in order, so these are the first `done` prompts

    # Resuming asks the model only for what was lost. (The resumed run covers the saved prompts and a few more,
    # not all 400, to keep the test quick.)
    counting = Counting(load_llm(str(tiny_model_path), batch_size=2, threads=1))
    resumed = CachedLLM(counting, db, chunk_size=2, progress=False)
    prompts = [f"Summarise the taste of user {i}." for i in range(done + 4)]
    gens = resumed.generate(prompts, n=2, temperature=1.0, max_new_tokens=8, seed=0)
    assert counting.asked == 4
    assert [g.cached for g in gens] == [n] * done + [0] * 4
    assert all(len(g.texts) == n for g in gens)
    assert _rows(db) == saved + 4 * n
