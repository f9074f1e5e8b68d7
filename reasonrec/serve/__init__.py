"""`reasonrec serve RUN_DIR`: a finished run's artifacts behind an HTTP API (FastAPI; ``[serve]`` extra).

Endpoints:

* ``GET /healthz`` → ``{"status": "ok"}``;
* ``GET /v1/model`` → the run's method, dataset, protocol, split checksum, reference, its ``all``-subgroup
  metric rows (value and interval per model × variant × metric) and the batcher's settings and counts
  (``batching``: batches run and requests they held; ``null`` with ``--max-batch 1``);
* ``GET /v1/users/{user_id}/explanation`` → the texts the run generated for that user, one per text column of
  the first per-user table (one with a ``user_column``) the method names through the report hook
  (``report_texts``, :mod:`reasonrec.eval.report`; R4ec: ``infer/user.parquet``, its ``kar``, ``r2ec`` and
  ``r4ec_refine`` knowledge). A user the run has no text for is a 404 naming the id and the run.

* ``POST /v1/score`` ``{"user_id", "item_ids": [...]}`` → one click probability per item, from the run's best
  backbone × variant (highest test AUC in ``results.json`` among the saved checkpoints) or the variant named by
  ``?variant=``;
* ``POST /v1/rank`` ``{"user_id", "candidates": [...]}`` → the candidates ordered by that probability.

Scoring reads the checkpoints the rec stage saves (:mod:`reasonrec.rec.checkpoint`, any ``*/ctr/`` folder of
the run; R4ec: ``rec/ctr/``). A request's history is the one of the user's latest sample in the run. A cold
user (one the run has no sample of) is scored as the backbones score padding: user id 0, an empty history,
the padding row of the user knowledge, so only the item side speaks; the answer says ``"cold_user": true``. An
item id the run's items table does not have is a 404 naming it. At most :data:`MAX_ITEMS` ids per request
(a 422 beyond). A run without checkpoints (finished before they were saved) answers 404 on both, saying so.

Everything is read once when the app is created. Concurrency: ``/v1/score`` and ``/v1/rank`` requests that
arrive together are coalesced into one CTR forward (:class:`~reasonrec.serve.batching.MicroBatcher`: at most
``--max-batch`` requests, default :data:`MAX_BATCH`, waiting at most ``--max-wait-ms``, default
:data:`MAX_WAIT_MS`, for the first one's companions; a batch keeps filling while the previous forward runs).
Each request is validated (404 / 422) before it joins a batch, so a bad request cannot fail the others. The
forward runs in a worker thread under one ``threading.Lock`` with ``torch.no_grad()``: torch modules in eval
mode hold no per-call state, and one forward at a time keeps concurrent requests from oversubscribing the
intra-op thread pool. ``--max-batch 1`` turns batching off (each request is its own forward in the thread
pool). ``benchmarks/serve.py`` measures both.

LLM calls: no endpoint calls an LLM at request time. The explanations are the texts the run generated (read
from its tables at start-up), and scores come from the CTR backbones. The Yes-probability scoring of an LLM
recommender (ThinkRec, TrackRec's V) and on-demand item-specific reasons are not served yet; when they are,
they belong behind the same batcher (one batched ``choice_probs`` / ``generate`` call per batch), since the
LLM backends already take a list of prompts per call.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..eval.results import read_results
from .batching import MicroBatcher


def _user_texts(root: Path, res) -> tuple[str | None, dict[int, dict[str, str]]]:
    from ..eval.report import _text_specs
    from ..runs import stage_markers

    for spec in _text_specs(res, stage_markers(root)):
        user_col = spec.get("user_column") or None
        path = root / spec["path"]
        if user_col is None or not path.is_file():
            continue
        df = pd.read_parquet(path)
        cols = spec.get("columns") or [c for c in df.columns if c != user_col
                                       and (df[c].dtype == object or pd.api.types.is_string_dtype(df[c]))]
        texts = {int(row[user_col]): {c: str(row[c]) for c in cols} for row in df.to_dict("records")}
        return spec["path"], texts
    return None, {}


MAX_ITEMS = 1000  # ids per score / rank request: one forward of this size takes ~tens of ms on a CPU core
MAX_BATCH = 32  # requests coalesced into one forward (at most MAX_BATCH × MAX_ITEMS rows)
MAX_WAIT_MS = 2.0  # how long the first request of a batch waits for others: ~a tenth of a 20-item forward


# ids are bounded so that no request can overflow the int64 tensors they become
_Id = Annotated[int, Field(ge=0, le=2**31 - 1)]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: _Id
    item_ids: list[_Id] = Field(min_length=1, max_length=MAX_ITEMS)


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: _Id
    candidates: list[_Id] = Field(min_length=1, max_length=MAX_ITEMS)


class Scored(BaseModel):
    user_id: int
    backbone: str
    variant: str
    cold_user: bool = Field(description="the run has no sample of this user: scored with the padding user "
                                        "(empty history, no user knowledge)")
    test_auc: float | None
    item_ids: list[int]
    probabilities: list[float]


class RankedItem(BaseModel):
    item_id: int
    score: float


class Ranked(BaseModel):
    user_id: int
    backbone: str
    variant: str
    cold_user: bool
    test_auc: float | None
    ranking: list[RankedItem]


class _Scorer:
    """The run's saved CTR backbones (one per variant × backbone) and the users' histories."""

    def __init__(self, root: Path, res):
        from ..rec import checkpoint as ckpt

        dirs = sorted(p.parent for p in root.glob("*/ctr/histories.pt"))
        self.folder = dirs[0] if dirs else None
        self.models: dict[tuple[str, str], Any] = {}
        self.features: dict[str, Any] = {}
        self.items: dict[str, set[int]] = {}
        if self.folder is None:
            return
        self.histories = ckpt.load_histories(self.folder / "histories.pt")
        for feats in sorted(self.folder.glob("*/features.pt")):
            variant = feats.parent.name
            self.features[variant], self.items[variant] = ckpt.load_features(feats)
            for path in sorted(feats.parent.glob("*.pt")):
                if path.name != "features.pt":
                    self.models[(path.stem, variant)] = ckpt.load_model(path, self.features[variant])
        auc = {(r.model, r.variant): r.value for r in res.rows if r.subgroup == "all" and r.metric == "auc"}
        # best of each variant, and overall, by the run's own test AUC (a model without a result row ranks last)
        ranked = sorted(self.models, key=lambda k: -auc.get(k, float("-inf")))
        self.best = {}
        for backbone, variant in ranked:
            self.best.setdefault(variant, backbone)
        self.default = (ranked[0][1] if ranked else None)
        self.auc = auc
        self.lock = threading.Lock()

    def score(self, user_id: int, item_ids: list[int], variant: str | None) -> dict[str, Any]:
        return self.score_many([(user_id, item_ids, variant)])[0]

    def score_many(self, requests: list[tuple[int, list[int], str | None]]) -> list[dict[str, Any]]:
        """Score several requests with one forward per variant: their rows are concatenated, encoded once and
        split back (a row's score does not depend on the other rows of the batch: the models are in eval mode)."""
        import torch

        out: list[dict[str, Any] | None] = [None] * len(requests)
        by_variant: dict[str, list[int]] = {}
        for k, (_, _, variant) in enumerate(requests):
            by_variant.setdefault(variant or self.default, []).append(k)
        for variant, ks in by_variant.items():
            backbone, fb, frames, meta = self.best[variant], self.features[variant], [], []
            for k in ks:
                user_id, item_ids, _ = requests[k]
                hist = self.histories.get(int(user_id))
                cold = hist is None
                h_items, h_ratings = ([], []) if cold else hist
                frames.append(pd.DataFrame({"user_id": [0 if cold else int(user_id)] * len(item_ids),
                                            "item_id": item_ids, "label": [0.0] * len(item_ids),
                                            "hist_item_ids": [h_items] * len(item_ids),
                                            "hist_ratings": [h_ratings] * len(item_ids)}))
                meta.append((k, int(user_id), cold, len(item_ids)))
            enc = fb.encode(pd.concat(frames, ignore_index=True), where="request")
            with self.lock, torch.no_grad():
                logit = self.models[(backbone, variant)](enc.batch(torch.arange(len(enc))))["logit"]
                probs = torch.sigmoid(logit).float().tolist()
            start = 0
            for k, user_id, cold, n in meta:
                out[k] = {"user_id": user_id, "backbone": backbone, "variant": variant, "cold_user": cold,
                          "test_auc": self.auc.get((backbone, variant)), "probabilities": probs[start:start + n]}
                start += n
        return out


def create_app(run_dir: str | Path, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS):
    """The FastAPI app of a finished run (a ResultsError if the run has no valid ``results.json``).
    ``max_batch`` requests at most per coalesced forward, waiting at most ``max_wait_ms`` for them
    (``max_batch=1``: no cross-request batching, each request is one forward in the thread pool)."""
    try:
        from fastapi import FastAPI, HTTPException
    except ImportError:  # the [serve] extra is optional
        raise ConfigError("reasonrec serve needs FastAPI and uvicorn: pip install -e '.[serve]'") from None
    from pydantic import BaseModel

    root = Path(run_dir).resolve()
    res, _ = read_results(root)
    source, texts = _user_texts(root, res)
    scorer = _Scorer(root, res)
    batcher = MicroBatcher(scorer.score_many, max_batch, max_wait_ms / 1000) if max_batch > 1 else None

    def _check(user_id: int, item_ids: list[int], variant: str | None) -> None:
        if scorer.folder is None or not scorer.models:
            raise HTTPException(404, f"run {root} saved no CTR checkpoints (no */ctr/histories.pt): re-run its rec "
                                     "stage with this version to score")
        if variant is not None and variant not in scorer.best:
            raise HTTPException(404, f"unknown variant {variant!r}; run {root} has {sorted(scorer.best)}")
        known = scorer.items[variant or scorer.default]
        unknown = [i for i in dict.fromkeys(item_ids) if i not in known]
        if unknown:
            raise HTTPException(404, f"unknown item_id {', '.join(map(str, unknown[:10]))}: not in the items table "
                                     f"of run {root}")

    async def _score(user_id: int, item_ids: list[int], variant: str | None) -> dict[str, Any]:
        _check(user_id, item_ids, variant)  # a bad request is answered at once, never joins a batch
        if batcher is None:
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(scorer.score, user_id, item_ids, variant)
        return await batcher.submit((user_id, item_ids, variant))

    class Explanation(BaseModel):
        user_id: int
        source: str
        texts: dict[str, str]

    app = FastAPI(title=f"reasonrec · {res.method} · {root.name}", version="1")
    app.state.batcher = batcher  # batch sizes for the benchmark and the tests

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model() -> dict[str, Any]:
        rows = [r.model_dump(include={"model", "variant", "metric", "value", "ci_low", "ci_high", "n"})
                for r in res.rows if r.subgroup == "all"]
        return {"method": res.method, "run": str(root), "dataset": res.dataset, "protocol": res.protocol,
                "split_checksum": res.split_checksum, "reference": res.reference, "metrics": rows,
                "explanations": source, "batching": None if batcher is None else {
                    "max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000,
                    "batches": batcher.batches, "requests": batcher.requests}}

    @app.get("/v1/users/{user_id}/explanation", response_model=Explanation)
    def explanation(user_id: int) -> Explanation:
        if user_id not in texts:
            what = f"in {source}" if source else "(the run names no per-user text table)"
            raise HTTPException(404, f"unknown user_id {user_id}: run {root} has no text for it {what}")
        return Explanation(user_id=user_id, source=source, texts=texts[user_id])

    @app.post("/v1/score", response_model=Scored)
    async def score(req: ScoreRequest, variant: str | None = None) -> Scored:
        return Scored(item_ids=req.item_ids, **await _score(req.user_id, req.item_ids, variant))

    @app.post("/v1/rank", response_model=Ranked)
    async def rank(req: RankRequest, variant: str | None = None) -> Ranked:
        out = await _score(req.user_id, req.candidates, variant)
        probs = out.pop("probabilities")
        # stable: equal scores keep the request's order
        order = sorted(range(len(probs)), key=lambda k: -probs[k])
        return Ranked(ranking=[RankedItem(item_id=req.candidates[k], score=probs[k]) for k in order], **out)

    return app
