"""Per-row commits: a ``kill -9`` during the *first* chunk of generation loses at most the rows in flight.

The child process runs the real :class:`CachedLLM` over a scripted backend (like tests/_r4ec_teacher.py) that
answers prompt by prompt, slowly, and prints each prompt's index once its answer is done: once as a backend that
declares no batching (one row at a time), once as a 8-way parallel one that reports finished rows through
``on_row`` (the ``row_callback`` protocol). The test kills it after a few rows of the first chunk.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import hashlib, sys, time
    from reasonrec.llm.base import Generation
    from reasonrec.llm.cache import CachedLLM

    class Options:
        parallel = 8

    class SlowRows:
        model_id = "slow-rows"

        def __init__(self, parallel):
            self.rows = 0
            self.supports = frozenset({"generate", "row_callback"} if parallel else {"generate"})
            if parallel:
                self.options = Options()

        def generate(self, prompts, n=1, on_row=None, **kw):
            out = []
            for j, p in enumerate(prompts):
                time.sleep(0.15)
                g = Generation(texts=[hashlib.sha256(p.encode()).hexdigest()[:8]], completion_tokens=[1])
                if on_row is not None:
                    on_row(j, g)
                out.append(g)
                print(self.rows, flush=True)  # this row is done (and, with on_row, handed to the cache)
                self.rows += 1
            return out

    llm = CachedLLM(SlowRows(sys.argv[2] == "parallel"), sys.argv[1], progress=False)
    print("chunk", llm.chunk_size, flush=True)
    llm.generate([f"Describe user {i}." for i in range(64)], max_new_tokens=4)
""")


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.parametrize(("mode", "chunk"), [("sequential", 1), ("parallel", 8)])
def test_kill_9_in_the_first_chunk_loses_at_most_the_rows_in_flight(tmp_path, mode, chunk):
    db, script = tmp_path / "gen.sqlite", tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(db), mode], env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        header = proc.stdout.readline().strip()
        assert header.startswith("chunk"), proc.stderr.read()[-2000:]
        done = [proc.stdout.readline() for _ in range(5)]  # five rows of the first chunk are done
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [int(x) for x in done] == [0, 1, 2, 3, 4]
    time.sleep(0.1)
    saved = _rows(db)
    # the sixth row was being computed when the kill came; all five finished rows survive
    # (a commit could still be racing the kill for the fifth: allow one)
    assert 4 <= saved <= 6, f"{saved} rows saved ({header})"
    assert header == f"chunk {chunk}"  # the chunk is what the backend works on at once
