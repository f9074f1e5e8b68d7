"""Reports and the leaderboard, on runs built from real metric computations on the ML-100K collm split: two
"methods" (item popularity and user/item positive rates from the train split), their per-sample predictions
through the results schema, stage markers, a manifest and a per-user text table named by the report hook."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reasonrec import io
from reasonrec.cli import app
from reasonrec.data import load_tables, make_splits
from reasonrec.eval import results as R
from reasonrec.eval.metrics import auc
from reasonrec.eval.report import compare_runs, render_report, write_report
from reasonrec.runs import RunDir


@pytest.fixture(scope="module")
def collm(ml100k_dir):
    tables = load_tables("ml-100k", ml100k_dir)
    splits = make_splits(tables, "collm", seed=0)
    return tables, splits


def _rates(train: pd.DataFrame, key: str, test: pd.DataFrame, prior: float = 5.0) -> np.ndarray:
    """Smoothed positive rate of each test row's user or item in the train split (a real, weak CTR score)."""
    g = train.groupby(key)["label"].agg(["sum", "size"])
    mean = train["label"].mean()
    rate = (g["sum"] + prior * mean) / (g["size"] + prior)
    return test[key].map(rate).fillna(mean).to_numpy(dtype=np.float64)


def _make_run(root, splits, tables, method: str, scores: dict[str, np.ndarray], checksum: str | None = None,
              hook: str = "marker"):
    """A run directory in the results schema; its text table is named by the stage marker or by ``details``
    (the two forms of the report hook)."""
    test = splits.test.reset_index(drop=True)
    preds = pd.concat([R.prediction_frame("stat", v, 0, test["user_id"], test["label"], s)
                       for v, s in scores.items()], ignore_index=True)
    run = RunDir(root, verbose=False)
    run.write_manifest(data_checksums=dict(tables.checksums))
    (root / "config.yaml").write_text(f"method: {method}\n")
    st = run.stage("texts", depends={"method": method})
    # a per-user text (what a method's LLM would write) built from the user's real train history
    titles = tables.items.set_index("item_id")["title"]
    users = test["user_id"].drop_duplicates().head(12)
    hist = splits.train.groupby("user_id")["item_id"].apply(list)
    texts = [("likes " + ", ".join(titles[i] for i in hist.get(u, [])[:3])) if u in hist.index else "cold user"
             for u in users]
    io.write_parquet(st.path / "user.parquet", pd.DataFrame({"entity_id": users.to_numpy(), "preference": texts}))
    spec = {"path": "user.parquet", "user_column": "entity_id", "caption": "user preference"}
    st.complete(["user.parquet"], branches={"kept": 3, "dropped": 1},
                **({"report_texts": [spec]} if hook == "marker" else {}))
    details = {"report_texts": [{**spec, "path": "texts/user.parquet"}]} if hook == "details" else {}
    io.write_parquet(root / "predictions.parquet", preds)
    section = R.ResultsSection(reference="base", metrics=["auc", "logloss"], n_boot=100, subgroups=False)
    res = R.build_results(preds, section, method=method, dataset="ml-100k", protocol="collm",
                          split_checksum=checksum or R.split_checksum({"train": splits.train, "test": splits.test}),
                          config={"method": method}, packages={}, predictions="predictions.parquet",
                          details=details)
    R.write_results(root, res, R.Timings(created="2026-12-01T00:00:00", stage_seconds={"texts": 1.5, "rec": 2.0}))
    return root


@pytest.fixture(scope="module")
def two_runs(collm, tmp_path_factory):
    tables, splits = collm
    test = splits.test.reset_index(drop=True)
    item = _rates(splits.train, "item_id", test)
    user = _rates(splits.train, "user_id", test)
    tmp = tmp_path_factory.mktemp("runs")
    a = _make_run(tmp / "pop", splits, tables, "pop", {"base": item, "user_rate": user})
    b = _make_run(tmp / "blend", splits, tables, "blend", {"base": item, "blend": 0.5 * item + 0.5 * user},
                  hook="details")
    return a, b, item, user, test


def test_report_has_the_tables_plots_timings_texts_and_checksums(two_runs):
    a, _, item, user, test = two_runs
    out = write_report([a])
    assert out.is_absolute() and out == (a / "report.html").resolve()
    page = out.read_text()
    # self-contained: inline SVG plots, no script and no remote resource
    assert page.count("<svg") >= 3  # auc and logloss variant plots + the branch-count bar plot
    assert 'data-plot="variants-auc"' in page and 'data-plot="branches"' in page
    assert "<script" not in page and not re.search(r"(src|href)=\"https?://", page)
    # the results table shows the real AUC of each variant, with its interval and the paired Δ
    res, _ = R.read_results(a)
    row = res.row("stat", "user_rate", "auc")
    assert row.value == pytest.approx(auc(test["label"], user))
    assert f"{row.value:.4f}" in page and f"[{row.ci_low:.4f}, {row.ci_high:.4f}]" in page
    delta = next(d for d in res.deltas if d.variant == "user_rate" and d.metric == "auc")
    assert f"{delta.value:+.4f}" in page
    # timings, manifest checksums, the config, and the user texts next to their test labels and scores
    assert "Stage timings" in page and "1.5" in page
    tables_sha = json.loads((a / "manifest.json").read_text())["data_checksums"]
    assert tables_sha and all(v in page for v in tables_sha.values())
    assert "config.yaml" in page and "likes " in page
    assert "test samples" in page and "score user_rate" in page
    md = out.with_suffix(".md").read_text()
    assert "| stat | user_rate |" in md and "Generated texts" in md and "likes " in md


def test_compare_ranks_runs_and_pairs_them_on_shared_samples(two_runs):
    a, b, item, user, test = two_runs
    board = compare_runs([a, b], n_boot=100)
    t = board.table
    assert board.metrics == ["auc", "logloss"]
    assert len(t) == 4 and list(t["auc"]) == sorted(t["auc"], reverse=True)
    top = t.iloc[0]
    assert board.paired_with == f"{top['run']}/{top['model']}/{top['variant']}"
    # both runs saved predictions on the same samples: every row has a paired Δ equal to the AUC difference
    for _, r in t.iterrows():
        assert r["Δ auc"] == pytest.approx(r["auc"] - top["auc"], abs=1e-12)
    # the two runs' base rows score identically: the same Δ
    bases = t[t["variant"] == "base"]
    assert len(bases) == 2 and bases["Δ auc"].nunique() == 1
    page, md = render_report([a, b])
    assert "Leaderboard (2 runs, same split)" in page and "Leaderboard" in md


def test_compare_refuses_runs_on_another_split_naming_them(two_runs, collm, tmp_path):
    a, _, item, _, _ = two_runs
    tables, splits = collm
    other = _make_run(tmp_path / "other", splits, tables, "pop", {"base": item}, checksum="0" * 64)
    with pytest.raises(R.ResultsError) as err:
        compare_runs([a, other])
    assert str(a) in str(err.value) and str(other) in str(err.value) and "split_checksum" in str(err.value)
    result = CliRunner().invoke(app, ["compare", str(a), str(other)])
    assert result.exit_code != 0


def test_cli_report_and_compare(two_runs, tmp_path):
    a, b, *_ = two_runs
    out = tmp_path / "both.html"
    result = CliRunner().invoke(app, ["report", str(a), str(b), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out.resolve()) in result.output and out.is_file() and (tmp_path / "both.md").is_file()
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--markdown"])
    assert result.exit_code == 0, result.output
    assert "| run | method | model | variant |" in result.output


def test_serve_health_model_and_explanations_over_asgi(two_runs, collm):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    import asyncio

    from reasonrec.serve import create_app

    a, b, *_ = two_runs
    for run in (a, b):  # both forms of the text hook
        texts = pd.read_parquet(run / "texts" / "user.parquet")
        res, _ = R.read_results(run)

        async def calls(run=run, texts=texts):
            transport = httpx.ASGITransport(app=create_app(run))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return [await client.get(p) for p in (
                    "/healthz", "/v1/model", f"/v1/users/{int(texts.entity_id[0])}/explanation",
                    "/v1/users/999999/explanation", "/v1/users/abc/explanation")]

        health, model, known, unknown, bad = asyncio.run(calls())
        assert health.json() == {"status": "ok"}
        m = model.json()
        assert m["method"] == res.method and m["split_checksum"] == res.split_checksum
        assert {(r["variant"], r["metric"], r["value"]) for r in m["metrics"]} == {
            (r.variant, r.metric, r.value) for r in res.rows if r.subgroup == "all"}
        assert known.status_code == 200 and known.json()["texts"] == {"preference": texts.preference[0]}
        assert unknown.status_code == 404 and "999999" in unknown.json()["detail"]
        assert bad.status_code == 422  # pydantic validation of the path parameter


def test_a_missing_text_table_is_a_warning_in_the_report_not_a_refusal(two_runs, tmp_path):
    import shutil

    a, *_ = two_runs
    run = tmp_path / "copy"
    shutil.copytree(a, run)
    (run / "texts" / "user.parquet").unlink()
    page = write_report([run]).read_text()
    assert "warning: report_texts names texts/user.parquet, which does not exist" in page
    assert 'data-plot="variants-auc"' in page


def test_round_curves_hook_draws_one_line_per_series_with_intervals():
    from reasonrec.eval.report import plot_curve

    spec = {"title": "V AUC per round", "x": "round", "y": "AUC",
            "series": {"trackrec": [[0, 0.61, 0.55, 0.67], [1, 0.64, 0.58, 0.70]], "no_align": [[0, 0.61], [1, None]]}}
    svg = plot_curve(spec)
    assert svg.startswith("<svg") and "V AUC per round" in svg and "trackrec" in svg and "no_align" in svg
    assert plot_curve({"series": {"a": [[0, None]]}}) is None
