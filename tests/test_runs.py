"""Run directories: config drift recomputes exactly the stages whose inputs changed, results never sit beside a
config that did not produce them, and one run at a time holds a run directory (two real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from reasonrec import io
from reasonrec.errors import RunLockedError
from reasonrec.eval import results as R
from reasonrec.runs import RunDir

REPO = Path(__file__).resolve().parents[1]


def _pipeline(run: RunDir, seed: int, scale: int, calls: list[str]) -> int:
    """Two stages: ``make`` writes ``seed`` (depends on ``seed``); ``use`` reads it and multiplies by ``scale``."""
    st = run.stage("make", depends={"data.seed": seed})
    if not st.done:
        calls.append("make")
        io.write_text(st.path / "value.txt", str(seed))
        st.complete(["value.txt"])
    use = run.stage("use", depends={"rec.scale": scale}, after=["make"])
    if not use.done:
        calls.append("use")
        value = int((run.stage("make").path / "value.txt").read_text()) * scale
        io.write_text(use.path / "out.txt", str(value))
        use.complete(["out.txt"])
    return int((use.path / "out.txt").read_text())


def test_changed_config_recomputes_the_stage_and_everything_downstream(tmp_path):
    calls: list[str] = []
    assert _pipeline(RunDir(tmp_path, verbose=False), 3, 2, calls) == 6 and calls == ["make", "use"]

    calls.clear()  # same config: both skipped
    assert _pipeline(RunDir(tmp_path, verbose=False), 3, 2, calls) == 6 and calls == []

    calls.clear()  # a downstream key: only that stage runs again
    assert _pipeline(RunDir(tmp_path, verbose=False), 3, 5, calls) == 15 and calls == ["use"]
    log = (tmp_path / "log.txt").read_text()
    assert "stage use: inputs changed since its last run (rec.scale); recomputing" in log

    calls.clear()  # an upstream key: upstream runs, and downstream sees its new artifact
    assert _pipeline(RunDir(tmp_path, verbose=False), 4, 5, calls) == 20 and calls == ["make", "use"]
    log = (tmp_path / "log.txt").read_text()
    assert "stage make: inputs changed since its last run (data.seed)" in log
    assert "stage use: inputs changed since its last run (make/value.txt)" in log
    marker = json.loads((tmp_path / "use" / "_SUCCESS.json").read_text())
    assert marker["depends"]["config"] == {"rec.scale": 5}


def test_timings_list_every_completed_stage_nested_ones_too(tmp_path):
    run = RunDir(tmp_path, verbose=False)
    _pipeline(run, 3, 2, [])
    nested = run.stage("cots/G0", depends={"x": 1})
    io.write_text(nested.path / "a.txt", "a")
    nested.complete(["a.txt"])
    run.stage("unfinished", depends={"x": 1})  # a folder without a marker is not a completed stage
    seconds = R.Timings.of_run(tmp_path).stage_seconds
    assert set(seconds) == {"make", "use", "cots/G0"}
    assert all(isinstance(v, float) and v >= 0 for v in seconds.values())


def test_a_stale_stage_folder_is_cleared_before_it_runs_again(tmp_path):
    run = RunDir(tmp_path, verbose=False)
    st = run.stage("train", depends={"train.base_model": "a"})
    io.write_text(st.path / "checkpoint-1" / "state.txt", "half-trained on model a")  # killed before complete()
    again = RunDir(tmp_path, verbose=False).stage("train", depends={"train.base_model": "a"})
    assert (again.path / "checkpoint-1" / "state.txt").exists()  # same inputs: the partial state is resumed
    other = RunDir(tmp_path, verbose=False).stage("train", depends={"train.base_model": "b"})
    assert not other.done and not (other.path / "checkpoint-1").exists()  # another model: nothing is resumed


def test_results_are_removed_when_the_config_beside_them_changes(tmp_path):
    from reasonrec.methods.r4ec import Config

    run = RunDir(tmp_path, verbose=False)
    cfg = Config(run_dir=tmp_path)
    run.write_config(cfg)
    io.write_json(tmp_path / "results.json", {"rec": {}})
    run.write_config(cfg)  # same config: its results stay
    assert (tmp_path / "results.json").exists()
    cfg.rec.backbones = ["dcn"]
    run.write_config(cfg)
    assert not (tmp_path / "results.json").exists()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["rec"]["backbones"] == ["dcn"]


HOLDER = textwrap.dedent("""
    import sys, time
    from reasonrec.runs import RunDir
    run = RunDir(sys.argv[1], verbose=False)
    run.acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_process_is_refused_and_a_dead_holder_frees_the_dir(tmp_path, ml100k_dir):
    run_dir = tmp_path / "run"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, str(script), str(run_dir)], env=env, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(RunLockedError, match=rf"in use by pid {holder.pid} on host .*another --run-dir"):
            RunDir(run_dir, verbose=False).acquire()

        # The CLI refuses a second run on the same dir in one line, before writing anything into it.
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({"method": "r4ec", "run_dir": str(run_dir), "subset": {"users": 3},
                                       "data": {"dataset": "ml-100k", "protocol": "kar"}}))
        res = subprocess.run([sys.executable, "-m", "reasonrec", "run", str(cfg), "--data-dir", str(ml100k_dir)],
                             env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stderr[-2000:]
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by pid {holder.pid}" in lines[0], res.stderr[-2000:]
        assert not (run_dir / "config.yaml").exists() and not (run_dir / "data").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a holder that dies without any clean-up
        holder.wait()
    assert str(holder.pid) in (run_dir / ".lock").read_text()  # its record is still there ...
    run = RunDir(run_dir, verbose=False)
    with run.lock():  # ... but the kernel released its lock
        assert str(os.getpid()) in (run_dir / ".lock").read_text()
    with run.lock():  # released on exit of the block, so it can be taken again
        pass


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    run = RunDir(tmp_path, verbose=False)
    with pytest.raises(ValueError), run.lock():
        raise ValueError("a stage failed")
    # flock locks belong to an open file, so a second RunDir in this process conflicts unless it was released
    with RunDir(tmp_path, verbose=False).lock():
        with pytest.raises(RunLockedError):
            RunDir(tmp_path, verbose=False).acquire()
