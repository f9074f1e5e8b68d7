"""`reasonrec serve` scoring on a real small run: ML-100K ``collm`` samples of 80 users, DIN and DeepFM trained
through :func:`train_knowledge_backbones` (the R4ec rec stage's loop) without and with real knowledge tables
(item genres; each user's mean genre of their train likes), checkpoints saved, results in the schema. The API
is called through the ASGI client; the schemathesis fuzz (slow) runs against a live ``reasonrec serve``."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reasonrec.data import load_tables, make_splits
from reasonrec.eval import results as R
from reasonrec.methods.common import _subset, train_knowledge_backbones
from reasonrec.methods.r4ec import RecSection
from reasonrec.runs import RunDir

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def genre_knowledge(tables, train: pd.DataFrame) -> dict[str, np.ndarray]:
    """Item rows: the genre multi-hot; user rows: the mean genre vector of the user's train likes (row 0 = pad)."""
    items = tables.items
    genres = sorted({g for s in items["categories"].fillna("") for g in str(s).split("|") if g})
    col = {g: k for k, g in enumerate(genres)}
    item = np.zeros((int(items["item_id"].max()) + 1, len(genres)), np.float32)
    for iid, s in zip(items["item_id"], items["categories"].fillna(""), strict=True):
        for g in str(s).split("|"):
            if g:
                item[int(iid), col[g]] = 1.0
    user = np.zeros((int(tables.users["user_id"].max()) + 1, len(genres)), np.float32)
    likes = train[train["label"] == 1]
    for u, g in likes.groupby("user_id")["item_id"]:
        user[int(u)] = item[g.to_numpy()].mean(0)
    return {"user": user, "item": item}


def build_run(root: Path, data_dir: Path, users: int = 80, epochs: int = 2) -> Path:
    tables = load_tables("ml-100k", data_dir)
    splits = _subset(make_splits(tables, "collm", seed=0), users, None, 0)
    rec = RecSection(backbones=["din", "deepfm"], epochs=epochs, batch_size=256)
    run = RunDir(root, verbose=False)
    run.write_manifest(data_checksums=dict(tables.checksums))
    st = run.stage("rec", depends={"test": 1})
    preds: list[pd.DataFrame] = []
    train_knowledge_backbones(splits, tables, {"base": None, "genre": genre_knowledge(tables, splits.train)}, rec,
                              predictions=preds, save_dir=st.path / "ctr")
    st.complete(["ctr"])
    preds = pd.concat(preds, ignore_index=True)
    section = R.ResultsSection(reference="base", metrics=["auc", "logloss"], n_boot=50, subgroups=False)
    res = R.build_results(preds, section, method="r4ec", dataset="ml-100k", protocol="collm",
                          split_checksum=R.split_checksum({"train": splits.train, "test": splits.test}),
                          config={"method": "r4ec"}, packages={}, predictions="predictions.parquet")
    io_preds = root / "predictions.parquet"
    preds.to_parquet(io_preds)
    R.write_results(root, res, R.Timings(created="2026-12-01T00:00:00", stage_seconds={"rec": 1.0}))
    return root


@pytest.fixture(scope="module")
def run(ml100k_dir, tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("serve") / "run", ml100k_dir, epochs=1)


def _calls(app, requests):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.post(path, json=body) for path, body in requests]
    return asyncio.run(go())


def test_score_and_rank_match_the_saved_backbones_predictions(run, ml100k_dir):
    from reasonrec.serve import MAX_ITEMS, create_app

    res, _ = R.read_results(run)
    auc = {(r.model, r.variant): r.value for r in res.rows if r.subgroup == "all" and r.metric == "auc"}
    best = max(auc, key=auc.get)
    preds = pd.read_parquet(run / "predictions.parquet")
    tables = load_tables("ml-100k", ml100k_dir)
    splits = _subset(make_splits(tables, "collm", seed=0), 80, None, 0)
    # the user's latest sample is the one served with its own history: its probability must be reproduced
    test = splits.test.reset_index(drop=True)
    both = pd.concat([splits.train, splits.test])
    latest = both.sort_values("timestamp", kind="stable").groupby("user_id").tail(1)
    row = test.merge(latest[["user_id", "item_id", "timestamp"]]).iloc[0]
    k = int(test.index[(test.user_id == row.user_id) & (test.item_id == row.item_id)
                       & (test.timestamp == row.timestamp)][0])
    want = preds[(preds.model == best[0]) & (preds.variant == best[1]) & (preds["sample"] == k)]["score"].item()

    app = create_app(run)
    items = [int(row.item_id), 1, 50, 181]
    score, rank, named, cold, unknown, big, bad_variant, extra = _calls(app, [
        ("/v1/score", {"user_id": int(row.user_id), "item_ids": items}),
        ("/v1/rank", {"user_id": int(row.user_id), "candidates": items}),
        ("/v1/score?variant=base", {"user_id": int(row.user_id), "item_ids": items}),
        ("/v1/score", {"user_id": 5000, "item_ids": items}),
        ("/v1/score", {"user_id": int(row.user_id), "item_ids": [1, 99999]}),
        ("/v1/score", {"user_id": 1, "item_ids": [1] * (MAX_ITEMS + 1)}),
        ("/v1/score?variant=nope", {"user_id": 1, "item_ids": [1]}),
        ("/v1/score", {"user_id": 1, "item_ids": [1], "extra": 1}),
    ])
    s = score.json()
    assert score.status_code == 200 and (s["backbone"], s["variant"]) == best and not s["cold_user"]
    assert s["probabilities"][0] == pytest.approx(want, abs=1e-5)
    assert all(0 < p < 1 for p in s["probabilities"]) and len(set(s["probabilities"])) == len(items)
    r = rank.json()["ranking"]
    assert [x["item_id"] for x in r] == [i for _, i in sorted(zip(s["probabilities"], items, strict=True),
                                                                reverse=True)]
    assert [x["score"] for x in r] == sorted(s["probabilities"], reverse=True)
    n = named.json()
    assert n["variant"] == "base" and n["backbone"] == max((m for m in auc if m[1] == "base"), key=auc.get)[0]
    c = cold.json()
    assert cold.status_code == 200 and c["cold_user"] and c["probabilities"] != s["probabilities"]
    assert unknown.status_code == 404 and "99999" in unknown.json()["detail"]
    assert big.status_code == 422 and extra.status_code == 422
    assert bad_variant.status_code == 404 and "'nope'" in bad_variant.json()["detail"]
    assert "genre" in bad_variant.json()["detail"]


def test_concurrent_requests_are_coalesced_and_answer_as_alone(run):
    """Requests sent together share forwards (batch sizes > 1) and get the probabilities they get one by one,
    across variants and with a cold user and a bad request in the mix (the bad one fails alone)."""
    from reasonrec.serve import create_app

    rng = np.random.default_rng(1)
    bodies = [{"user_id": int(u), "item_ids": rng.choice(np.arange(1, 500), int(rng.integers(1, 30))).tolist()}
              for u in [*rng.choice(np.arange(1, 900), 22), 5000]]
    paths = ["/v1/score", "/v1/score?variant=base"] * 12
    calls = list(zip(paths, bodies, strict=False))
    alone = [r.json() for r in _calls(create_app(run, max_batch=1), calls)]
    app = create_app(run, max_batch=8, max_wait_ms=50)

    async def together():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            bad = client.post("/v1/score", json={"user_id": 1, "item_ids": [99999]})
            return await asyncio.gather(bad, *(client.post(p, json=b) for p, b in calls))
    bad, *answers = asyncio.run(together())
    assert bad.status_code == 404
    assert [a.status_code for a in answers] == [200] * len(calls)
    sizes = app.state.batcher.sizes
    assert sum(sizes) == len(calls) and max(sizes) == 8 and len(sizes) < len(calls)
    for a, b in zip(answers, alone, strict=True):
        a = a.json()
        assert (a["variant"], a["backbone"], a["cold_user"]) == (b["variant"], b["backbone"], b["cold_user"])
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_a_run_without_checkpoints_says_so(run, tmp_path):
    import shutil

    from reasonrec.serve import create_app

    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "rec" / "ctr")
    (resp,) = _calls(create_app(copy), [("/v1/score", {"user_id": 1, "item_ids": [1]})])
    assert resp.status_code == 404 and "saved no CTR checkpoints" in resp.json()["detail"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_in_background(run: Path, port: int, *options: str) -> subprocess.Popen:
    """`reasonrec serve RUN --port PORT [OPTIONS]` in a child process, returned once /healthz answers."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", "from reasonrec.cli import app; app()", "serve", str(run), "--port", str(port),
                             *options],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"reasonrec serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("reasonrec serve did not answer /healthz within 120 s")


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_on_a_live_server(run):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    port = _free_port()
    proc = serve_in_background(run, port)
    try:
        schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
        failures, seen = [], {}

        def fuzz(operation):
            @settings(max_examples=25, deadline=5000, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def check(case):
                resp = case.call(timeout=30)
                seen.setdefault(operation.label, set()).add(resp.status_code)
                if resp.status_code >= 500:
                    failures.append((operation.label, case.body, case.query, resp.status_code, resp.text[:300]))
            check()

        for op in schema.get_all_operations():
            fuzz(op.ok())
        assert not failures, failures
        # the fuzz reached the scoring code, not only the validation in front of it
        assert 200 in seen["POST /v1/score"] and 200 in seen["POST /v1/rank"], seen
    finally:
        proc.terminate()
        proc.wait(timeout=30)
