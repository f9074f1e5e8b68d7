"""`reasonrec bench`'s baselines on a method's own split: real ML-100K collm samples of 80 users, Pop and MF
trained by the baselines package, predictions in the results schema on the method run's split checksum, so
``compare`` ranks and pairs them with the method's rows; a split that does not hash to the run's is refused."""

from __future__ import annotations

import pytest
from test_report import _make_run, _rates

from reasonrec.bench import BenchConfig, baseline_run, load_bench
from reasonrec.data import load_tables, make_splits
from reasonrec.errors import ConfigError
from reasonrec.eval import results as R
from reasonrec.eval.report import compare_runs
from reasonrec.methods.common import _subset


def test_baselines_on_a_methods_split_join_its_leaderboard(ml100k_dir, tmp_path):
    tables = load_tables("ml-100k", ml100k_dir)
    splits = _subset(make_splits(tables, "collm", seed=0), 80, None, 0)
    test = splits.test.reset_index(drop=True)
    method = _make_run(tmp_path / "method", splits, tables, "blend", {"base": _rates(splits.train, "item_id", test)},
                       checksum=R.split_checksum({"train": splits.train, "valid": splits.valid, "test": splits.test}))
    res, _ = R.read_results(method)
    cfg = BenchConfig(run_root=tmp_path, methods=["x.yaml"], baselines=["pop", "mf"], baseline_epochs=2,
                      results=R.ResultsSection(reference="classic", metrics=["auc", "logloss"], n_boot=50,
                                               subgroups=False))
    source = {"run": str(method), "dataset": "ml-100k", "protocol": "collm", "split_checksum": res.split_checksum}
    out = baseline_run(splits, tables, tmp_path / "method-baselines", cfg, source)
    base, _ = R.read_results(out)
    assert (base.method, base.split_checksum) == ("baselines", res.split_checksum)
    aucs = {r.model: r.value for r in base.rows if r.metric == "auc"}
    assert set(aucs) == {"pop", "mf"} and all(0.5 < v < 1 for v in aucs.values())
    board = compare_runs([method, out], n_boot=50)
    assert set(board.table["model"]) == {"stat", "pop", "mf"} and board.paired_with is not None
    assert board.table["Δ auc"].notna().all()  # same test samples: every row paired
    # the same split again is reused, not retrained; another split is refused
    mtime = (out / "results.json").stat().st_mtime_ns
    assert baseline_run(splits, tables, out, cfg, source) == out and (out / "results.json").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="evaluated_splits does not match"):
        baseline_run(splits, tables, out, cfg, {**source, "split_checksum": "0" * 64})


def test_a_bench_naming_an_unknown_baseline_is_refused(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("run_root: x\nmethods: [a.yaml]\nbaselines: [pop, nope]\n")
    with pytest.raises(ConfigError, match="nope"):
        load_bench(path)


@pytest.mark.slow
def test_the_smoke_bench_runs_every_method_and_writes_a_leaderboard(ml100k_dir, tmp_path):
    """configs/bench/smoke.yaml end to end, as a user runs it from a checkout: every method's smoke config, the
    baselines on the splits of the methods that declare them, one leaderboard file per split."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shutil.copytree(Path(__file__).parents[1] / "configs", tmp_path / "configs")
    out = subprocess.run([sys.executable, "-m", "reasonrec", "bench", "configs/bench/smoke.yaml",
                          "--data-dir", str(ml100k_dir)], cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    boards = sorted((tmp_path / "runs" / "bench-smoke").rglob("leaderboard*.md"))
    assert boards, out.stdout[-2000:]
    assert "pop" in out.stdout and "mf" in out.stdout
    for cfg in ("r4ec", "trackrec", "starec", "thinkrec"):
        assert any((p / "results.json").exists() for p in (tmp_path / "runs").rglob(f"*{cfg}*")), cfg


def test_the_collm_pair_configs_evaluate_the_same_samples(ml100k_dir, tmp_path):
    """configs/bench/collm-pair-cpu.yaml's promise: TrackRec's and ThinkRec's pair configs draw the same subset
    from the real ML-100K files, hashed the same way, so compare puts them in one leaderboard (each method's
    results.json hashes its subset with R.splits_checksum, as this test does)."""
    from pathlib import Path

    from reasonrec.methods import load_experiment
    from reasonrec.runs import RunDir

    bench = load_bench(Path(__file__).parents[1] / "configs/bench/collm-pair-cpu.yaml")
    sums, sizes = {}, {}
    for path in bench.methods:
        module, cfg = load_experiment(Path(__file__).parents[1] / path)
        cfg.data.data_dir = ml100k_dir
        run = RunDir(tmp_path / cfg.method)
        with run.lock():
            s = module.stage_samples(cfg, run).splits  # each method's own samples stage
        sums[cfg.method] = R.splits_checksum(s)  # as each method hashes its results.json
        sizes[cfg.method] = (len(s.train), len(s.test), s.test["label"].nunique())
    assert set(sums) == {"trackrec", "thinkrec"}
    assert sums["trackrec"] == sums["thinkrec"] and sizes["trackrec"] == (8, 128, 2)
