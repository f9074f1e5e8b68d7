"""Run an experiment config in a subprocess and SIGKILL it inside a stage (the kill -9 resumption tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def kill_in_stage(config: Path, run: Path, data_dir: Path, stage: str, committed: Callable[[], int],
                  timeout: float = 900) -> int:
    """Start ``reasonrec`` on ``config``; once the log says ``stage <stage>: running`` and ``committed()`` (rows the
    stage has written so far) is positive, SIGKILL it. Returns that count; fails if the run ended first or the
    stage completed."""
    code = "import sys; from reasonrec.methods import run_experiment; run_experiment(sys.argv[1])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "REASONREC_DATA_DIR": str(data_dir)})
    deadline, n = time.time() + timeout, 0
    try:
        while proc.poll() is None and time.time() < deadline:
            log = run / "log.txt"
            if log.exists() and f"stage {stage}: running" in log.read_text():
                n = committed()
                if n:
                    break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert n, f"the run ended (exit {proc.returncode}) before stage {stage} committed anything"
    assert not (run / stage / "_SUCCESS.json").exists(), f"stage {stage} completed before the kill"
    return n
