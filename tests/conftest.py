"""Shared fixtures: the real datasets in ``../shared/data`` and the tiny random model with the real tokenizer; and
the ``own_process`` marker, which runs a test in a forked child so that a native crash fails that test only."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from _pytest.runner import runtestprotocol

REPO = Path(__file__).resolve().parents[1]
# CI clones the project with shared/ beside it; a developer may point elsewhere.
SHARED_DATA = Path(os.environ.get("REASONREC_TEST_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set REASONREC_TEST_DATA to the folder holding it)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA, "shared test data")


@pytest.fixture(scope="session")
def ml100k_dir(shared_data) -> Path:
    return _require(shared_data / "ml-100k", "MovieLens-100K")


@pytest.fixture(scope="session")
def ml1m_dir(shared_data) -> Path:
    d = shared_data / "ml-1m"
    if not (d / "ratings.dat").exists():
        pytest.skip(f"MovieLens-1M ratings.dat is not in {d}; run `reasonrec data fetch ml-1m` to enable these checks")
    return d


@pytest.fixture(scope="session")
def amazon_dir(shared_data) -> Path:
    return _require(shared_data / "amazon-2018", "Amazon 2018 Gift_Cards")


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """A 2-layer, 64-wide random Llama with SmolLM2's real tokenizer and chat template (built once, cached)."""
    from reasonrec.llm.bundled import tiny_model

    return tiny_model()


# --- own_process: a test in a forked child process ----------------------------------------------------------------
# A segfault inside llama.cpp (issue 12) used to end the whole run with exit 139 and no summary. A marked test runs
# in a fork of the test process: the child runs the test's setup, call and teardown and hands its reports back
# through pytest's own report serialisation (the one pytest-xdist uses); a child killed by a signal becomes one
# failed report naming the test, the signal and the child's faulthandler traceback, and the run goes on.
# pytest-forked does the same but cannot serialise pytest 9.2's reports (its marshal chokes on NodeId).
# Fixtures wider than the test are set up in the child and die with it, so each marked test pays for its own.


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if item.get_closest_marker("own_process") is None or not hasattr(os, "fork"):
        return None  # no fork on Windows: the test runs in the test process
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for report in _run_in_child(item):
        item.ihook.pytest_runtest_logreport(report=report)
    # The parent set nothing up for this test; what the previous test left and the next one does not need goes
    # (pytest has no public call for this; pytest-forked uses the same one).
    item.session._setupstate.teardown_exact(nextitem)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _run_in_child(item) -> list[pytest.TestReport]:
    config = item.config
    with tempfile.TemporaryDirectory(prefix="reasonrec-own-process-") as tmp:
        reports_path, fault_path = Path(tmp) / "reports.json", Path(tmp) / "fault.txt"
        start = time.time()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                fault = open(fault_path, "w")
                faulthandler.enable(file=fault)  # a native crash's Python traceback, for the parent's report
                reports = runtestprotocol(item, log=False)
                data = [config.hook.pytest_report_to_serializable(config=config, report=r) for r in reports]
                reports_path.write_text(json.dumps(data))
                code = 0
            finally:
                os._exit(code)  # no atexit, no flush of the parent's buffered output a second time
        try:
            _, status = os.waitpid(pid, 0)
        except BaseException:  # Ctrl-C: do not leave the child running
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            reports = [config.hook.pytest_report_from_serializable(config=config, data=d)
                       for d in json.loads(reports_path.read_text())]
            for r in reports:  # a skip's (path, line, reason) came back from JSON as a list; the summary wants it
                if r.skipped and isinstance(r.longrepr, list):
                    r.longrepr = tuple(r.longrepr)
            return reports
        if os.WIFSIGNALED(status):
            how = f"was killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
        else:
            how = f"exited with status {os.WEXITSTATUS(status)} before reporting"
        # faulthandler prints the innermost frames first; below them is pytest's own call stack.
        trace = fault_path.read_text(errors="replace").strip().splitlines()
        longrepr = "\n".join([f"{item.nodeid}: the test process (own_process, pid {pid}) {how}", *trace[:16]])
        return [pytest.TestReport(nodeid=item.nodeid, location=item.location, keywords=dict.fromkeys(item.keywords, 1),
                                  outcome="failed", longrepr=longrepr, when="call", duration=time.time() - start)]
