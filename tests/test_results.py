"""The results schema and the user bootstrap: coverage of the interval, exact zero for a variant against
itself, whole users per replicate, validation on write and read, comparability of runs, subgroups on the real
ML-100K split, and `reasonrec results`."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reasonrec.cli import app
from reasonrec.data import load_tables, make_splits
from reasonrec.errors import ConfigError
from reasonrec.eval import bootstrap as B
from reasonrec.eval import metrics as M
from reasonrec.eval import results as R


def _clustered(rng, n_users: int, mu: float, user_sd: float):
    """Users with 2-12 samples each; label ~ Bernoulli(0.5); score = mu·label + user effect + N(0, 1).

    Across users, positives score N(mu, 1 + user_sd²) and negatives N(0, 1 + user_sd²), so the population AUC
    is Φ(mu / sqrt(2 (1 + user_sd²))) (within-user pairs, ~2% of pairs here, shift it by < 0.002)."""
    sizes = rng.integers(2, 13, n_users)
    users = np.repeat(np.arange(n_users), sizes)
    labels = rng.integers(0, 2, len(users))
    scores = mu * labels + rng.normal(0, user_sd, n_users)[users] + rng.normal(0, 1, len(users))
    return users, labels, scores


def test_interval_covers_the_true_auc_at_the_nominal_rate():
    mu, user_sd = 1.0, 1.0
    true_auc = 0.5 * (1 + math.erf(mu / math.sqrt(2 * (1 + user_sd**2)) / math.sqrt(2)))
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    reps = 200
    for rep in range(reps):
        u, y, s = _clustered(rng, 60, mu, user_sd)
        est = B.bootstrap_metric("auc", u, y, s, n_boot=200, seed=rep)
        covered += est.ci_low <= true_auc <= est.ci_high
        widths.append(est.ci_high - est.ci_low)
    coverage = covered / reps
    # 95% nominal; the binomial sd over 200 replications is 1.5 points
    assert 0.89 <= coverage <= 0.99, coverage
    assert 0.05 < np.mean(widths) < 0.3


def test_auc_ranks_equals_sklearn_auc_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # many ties
    assert M.auc_ranks(y, s) == pytest.approx(M.auc(y, s), abs=1e-12)
    assert math.isnan(M.auc_ranks(np.ones(5, int), np.arange(5.0)))


def test_a_replicate_keeps_whole_users_and_counts_repeats_as_users():
    users = np.array([7, 7, 7, 3, 9, 9])
    boot = B.UserBootstrap(users, n_boot=50, seed=0)
    for b in range(50):
        idx, new_ids = boot.draw(b)
        assert len(np.unique(new_ids)) == 3  # as many drawn users as users
        for j in np.unique(new_ids):
            drawn = users[idx[new_ids == j]]
            assert len(set(drawn)) == 1 and len(drawn) == (users == drawn[0]).sum()


def test_paired_delta_of_a_variant_against_itself_is_exactly_zero():
    rng = np.random.default_rng(2)
    u, y, s = _clustered(rng, 40, 1.0, 0.5)
    seeds = np.vstack([s, s + rng.normal(0, 0.3, len(s))])
    for metric in ("auc", "uauc", "logloss", "acc", "ndcg@5"):
        probs = 1 / (1 + np.exp(-seeds))
        d = B.paired_delta(metric, u, y, probs, probs.copy(), n_boot=100)
        assert (d.value, d.ci_low, d.ci_high, d.p_value) == (0.0, 0.0, 0.0, 1.0), metric


def test_paired_interval_is_narrower_than_the_marginal_ones_and_finds_a_real_gain():
    rng = np.random.default_rng(3)
    u, y, s = _clustered(rng, 80, 0.8, 1.0)
    better = s + 0.6 * y  # the same scores plus signal: strongly correlated with the reference
    est, deltas = B.evaluate_variants("auc", u, y, {"base": s, "new": better}, "base", n_boot=300)
    d = deltas["new"]
    assert d.value == pytest.approx(est["new"].value - est["base"].value)
    assert 0 < d.ci_low < d.value < d.ci_high and d.p_value < 0.01
    assert d.ci_high - d.ci_low < 0.5 * (est["base"].ci_high - est["base"].ci_low)


def test_seed_mean_and_seed_sd():
    rng = np.random.default_rng(4)
    u, y, s = _clustered(rng, 30, 1.0, 0.5)
    mat = np.vstack([s + rng.normal(0, 0.5, len(s)) for _ in range(3)])
    est = B.bootstrap_metric("uauc", u, y, mat, n_boot=50)
    per_seed = [M.uauc(u, y, row) for row in mat]
    assert est.value == pytest.approx(np.mean(per_seed))
    assert est.seed_sd == pytest.approx(np.std(per_seed, ddof=1))
    assert est.n == M._group_auc(u, y, s).shape[0]
    assert est.ci_low < est.value < est.ci_high
    nd = B.bootstrap_metric("ndcg@5", u, y, s, n_boot=50)
    assert nd.value == pytest.approx(M.user_ndcg_at_k(u, y, s, 5)) and nd.n == 30


def test_unknown_metric_names_the_valid_ones():
    with pytest.raises(ConfigError, match="ndcg@K"):
        B.metric_function("ndcg@x")
    with pytest.raises(ValueError, match="unknown metric"):
        R.ResultsSection(metrics=["aucc"])


def _predictions(rng, n_users=25, variants=("base", "kar", "same"), seeds=(0, 1)) -> pd.DataFrame:
    u, y, s = _clustered(rng, n_users, 1.0, 0.5)
    frames = []
    for v in variants:
        for seed in seeds:
            noise = 0 if v in ("base", "same") else rng.normal(0, 1, len(s))
            score = 1 / (1 + np.exp(-(s + noise + 0.1 * seed)))
            frames.append(R.prediction_frame("din", v, seed, u, y, score))
    preds = pd.concat(frames, ignore_index=True)
    train = pd.DataFrame({"user_id": np.repeat(np.arange(0, n_users, 2), 45)})  # even users are warm
    test = pd.DataFrame({"user_id": u})
    return R.attach_subgroups(preds, test, train, [10, 40])


def _results(preds, **section) -> R.Results:
    return R.build_results(preds, R.ResultsSection(n_boot=60, **section), method="test", dataset="ml-100k",
                           protocol="kar", split_checksum="abc", config={"run_dir": "x", "seed": 0},
                           packages={"numpy": np.__version__}, predictions="rec/predictions.parquet")


def test_rows_from_predictions_cover_every_key_and_pair_deltas(tmp_path):
    preds = _predictions(np.random.default_rng(5))
    res = _results(preds)
    subgroups = {r.subgroup for r in res.rows}
    assert subgroups == {"all", "warm", "cold", "activity:<10", "activity:>=40"}
    assert len(res.rows) == 3 * 4 * len(subgroups)
    assert "run_dir" not in res.config
    all_auc = res.row("din", "kar", "auc")
    assert all_auc.seeds == [0, 1] and all_auc.n == len(preds) // 6
    same = [d for d in res.deltas if d.variant == "same"]
    assert same and all(d.value == 0 and d.ci_low == d.ci_high == 0 and d.p_value == 1 for d in same)
    warm = preds[(preds.user_type == "warm") & (preds.variant == "base") & (preds.seed == 0)]
    assert res.row("din", "base", "auc", "warm").n == len(warm)

    R.write_results(tmp_path, res, R.Timings(created="now", stage_seconds={"rec": 1.0}))
    back, timings = R.read_results(tmp_path)
    assert back == res and timings.stage_seconds == {"rec": 1.0}
    table = pd.read_parquet(tmp_path / "results.parquet")
    assert len(table) == len(res.rows) + len(res.deltas) and set(table["kind"]) == {"metric", "delta"}
    md = R.render_markdown(res)
    assert md.count("| din |") == 3 and "Δ vs base" in md and "| warm | din/kar |" in md


def test_too_few_users_give_a_value_but_no_interval():
    preds = _predictions(np.random.default_rng(10))
    res = _results(preds, min_users=13)  # warm: 13 users, cold: 12
    cold, warm = res.row("din", "kar", "auc", "cold"), res.row("din", "kar", "auc", "warm")
    assert cold.value is not None and cold.ci_low is None and cold.ci_high is None
    assert warm.ci_low is not None
    d = next(d for d in res.deltas if d.subgroup == "cold" and d.variant == "kar" and d.metric == "auc")
    assert d.value is not None and d.p_value is None and d.ci_low is None


def test_unpaired_predictions_are_refused():
    preds = _predictions(np.random.default_rng(6))
    bad = preds.copy()
    bad.loc[(bad.variant == "kar") & (bad.seed == 1) & (bad["sample"] == 0), "label"] ^= 1
    with pytest.raises(R.DataError, match="same test samples"):
        _results(bad)
    with pytest.raises(ConfigError, match="results.reference"):
        _results(preds, reference="r4ec")


def test_schema_is_validated_on_write_and_old_schemas_are_refused(tmp_path):
    res = _results(_predictions(np.random.default_rng(7)), subgroups=False)
    data = res.model_dump(mode="json")
    broken = json.loads(json.dumps(data))
    broken["rows"][0]["ci_low"], broken["rows"][0]["ci_high"] = 0.9, 0.1
    with pytest.raises(R.ResultsError, match="ci_low"):
        R.write_results(tmp_path, broken)
    extra = json.loads(json.dumps(data))
    extra["rows"][0]["auc"] = 0.5
    with pytest.raises(R.ResultsError, match="unknown key 'rows.0.auc'"):
        R.write_results(tmp_path, extra)
    nan = json.loads(json.dumps(data))
    nan["rows"][0]["value"] = float("nan")
    with pytest.raises(R.ResultsError, match="finite"):
        R.write_results(tmp_path, nan)
    assert not (tmp_path / "results.json").exists()

    old = {**data, "schema_version": 0}
    (tmp_path / "results.json").write_text(json.dumps(old))
    with pytest.raises(R.ResultsError, match="schema_version 0; this reasonrec reads schema_version 1"):
        R.read_results(tmp_path)
    # the R4ec file before this schema: {"data": ..., "rec": {backbone: {variant: {...}}}}
    (tmp_path / "results.json").write_text(json.dumps({"data": {}, "rec": {"din": {"base": {"auc": 0.5}}}}))
    with pytest.raises(R.ResultsError, match="no schema_version"):
        R.read_results(tmp_path)


def test_check_comparable_refuses_another_split(ml100k_dir):
    tables = load_tables("ml-100k", ml100k_dir)
    splits = make_splits(tables, "collm", seed=0)
    frames = {"train": splits.train, "valid": splits.valid, "test": splits.test}
    checksum = R.split_checksum(frames)
    assert checksum == R.split_checksum({k: v.copy() for k, v in frames.items()})
    changed = splits.test.copy()
    changed.loc[changed.index[0], "label"] ^= 1
    assert R.split_checksum({**frames, "test": changed}) != checksum

    res = _results(_predictions(np.random.default_rng(8)), subgroups=False)
    a = res.model_copy(update={"split_checksum": checksum})
    R.check_comparable(a, a.model_copy())
    with pytest.raises(R.ResultsError, match="split_checksum differs"):
        R.check_comparable(a, a.model_copy(update={"split_checksum": R.split_checksum({**frames, "test": changed})}))

    # warm = the user has train rows; collm's own `warm` column (user *and* item in train) implies it, and most
    # of collm's test users (a later month) have no train rows: 60% on ML-100K seed 0
    groups = R.user_subgroups(splits.test, splits.train)
    warm = groups["user_type"] == "warm"
    assert warm[splits.test["warm"].astype(bool)].all() and not warm.all()
    cold_users = splits.test.loc[~warm, "user_id"].nunique() / splits.test["user_id"].nunique()
    assert 0.5 < cold_users < 0.7, cold_users
    assert set(groups["activity"]) <= {"activity:<25", "activity:25-39", "activity:>=40"}


def test_cli_prints_the_table_and_recomputes_another_reference(tmp_path):
    preds = _predictions(np.random.default_rng(9))
    res = _results(preds)
    (tmp_path / "rec").mkdir()
    preds.to_parquet(tmp_path / "rec" / "predictions.parquet")
    R.write_results(tmp_path, res)
    runner = CliRunner()
    out = runner.invoke(app, ["results", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "Δ vs base" in out.output and "kar" in out.output and "+0.0000" in out.output
    out = runner.invoke(app, ["results", str(tmp_path), "--reference", "kar", "--subgroup", "warm"])
    assert out.exit_code == 0, out.output
    assert "Δ vs kar" in out.output
    again = R.recompute(tmp_path, "kar")
    d = next(d for d in again.deltas if d.variant == "base" and d.metric == "auc" and d.subgroup == "all")
    first = next(d for d in res.deltas if d.variant == "kar" and d.metric == "auc" and d.subgroup == "all")
    assert d.value == pytest.approx(-first.value) and d.ci_low == pytest.approx(-first.ci_high)


def test_split_checksum_is_the_same_for_equal_string_columns_in_another_process():
    """A pandas string column (TrackRec's sample keys) is hashed by its values: its ``to_numpy()`` is an object
    array, whose raw bytes are pointers that change with every process and copy."""
    import subprocess
    import sys

    code = ("import pandas as pd; from reasonrec.eval.results import split_checksum; "
            "df = pd.DataFrame({'sample': pd.array(['train:1', 'train:2'], dtype='string'), 'label': [0, 1]}); "
            "print(split_checksum({'train': df}))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(outs) == 1
    df = pd.DataFrame({"sample": pd.array(["train:1", "train:2"], dtype="string"), "label": [0, 1]})
    assert R.split_checksum({"train": df}) == outs.pop().strip()
    assert R.split_checksum({"train": df.copy()}) == R.split_checksum({"train": df})
